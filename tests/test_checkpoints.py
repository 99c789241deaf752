"""Shipped configs of the released checkpoints, random-weight building blocks, and the tiny test checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from musicgen_onnx.export import random_weights as rw  # noqa: E402
from musicgen_onnx.export.standin_tokenizer import build_standin_tokenizer  # noqa: E402

# docs/design.md §16: decoder hidden / layers / heads / ffn per family.
FAMILY_DIMS = {
    "small": (1024, 24, 16, 4096),
    "medium": (1536, 48, 24, 6144),
    "large": (2048, 48, 32, 8192),
    "melody": (1536, 48, 24, 6144),
    "melody-large": (2048, 48, 32, 8192),
}
HUB_GENERATION = {
    "do_sample": True,
    "guidance_scale": 3.0,
    "max_length": 1500,
    "pad_token_id": 2048,
    "bos_token_id": 2048,
    "decoder_start_token_id": 2048,
}
PROMPTS = ["80s pop track with bassy drums and synth", "calm piano", "Zebra quux!  90s   rock song"]


def test_known_checkpoints_are_the_ten_released():
    expected = {f"facebook/musicgen-{'stereo-' if s else ''}{f}" for f in FAMILY_DIMS for s in (False, True)}
    assert set(rw.KNOWN_CHECKPOINTS) == expected
    assert len(rw.KNOWN_CHECKPOINTS) == 10


@pytest.mark.parametrize("name", rw.KNOWN_CHECKPOINTS)
def test_shipped_config_matches_design(name):
    short = name.split("/", 1)[1]
    stereo = short.startswith("musicgen-stereo-")
    family = short.removeprefix("musicgen-").removeprefix("stereo-")
    melody = family.startswith("melody")
    config = rw.load_shipped_config(name)
    assert rw.load_shipped_config(short).to_dict() == config.to_dict()  # "musicgen-x" names the same checkpoint
    expected_cls = transformers.MusicgenMelodyConfig if melody else transformers.MusicgenConfig
    assert type(config) is expected_cls
    assert rw.is_melody(name) is melody and rw.is_stereo(short) is stereo

    dec = config.decoder
    hidden, layers, heads, ffn = FAMILY_DIMS[family]
    assert (dec.hidden_size, dec.num_hidden_layers, dec.num_attention_heads, dec.ffn_dim) == (
        hidden,
        layers,
        heads,
        ffn,
    )
    assert dec.num_codebooks == (8 if stereo else 4)
    assert dec.audio_channels == (2 if stereo else 1)
    assert dec.vocab_size == 2048 and dec.max_position_embeddings == 2048
    assert dec.pad_token_id == 2048 and dec.bos_token_id == 2048
    assert dec.activation_function == "gelu" and not dec.tie_word_embeddings

    text = config.text_encoder
    assert text.model_type == "t5"
    assert (text.d_model, text.num_layers, text.num_heads, text.d_ff, text.d_kv, text.vocab_size) == (
        768,
        12,
        12,
        3072,
        64,
        32128,
    )
    assert text.feed_forward_proj == "relu"
    assert (text.relative_attention_num_buckets, text.relative_attention_max_distance) == (32, 128)

    audio = config.audio_encoder
    assert audio.model_type == "encodec"
    assert audio.sampling_rate == 32000 and list(audio.upsampling_ratios) == [8, 5, 4, 4]
    assert audio.frame_rate == 50 and audio.num_quantizers == 4 and audio.codebook_size == 2048
    assert list(audio.target_bandwidths) == [2.2]
    assert (audio.num_filters, audio.hidden_size, audio.num_lstm_layers, audio.codebook_dim) == (64, 128, 2, 128)
    assert audio.audio_channels == 1
    assert not audio.use_causal_conv and not audio.normalize and not audio.use_conv_shortcut
    assert audio.pad_mode == "reflect" and audio.chunk_length_s is None and audio.overlap is None
    if melody:
        assert (config.num_chroma, config.chroma_length) == (12, 235)

    assert rw.load_shipped_generation_config(name) == HUB_GENERATION


def test_shipped_json_layout():
    """One JSON per checkpoint: the config's to_dict() plus a top-level "generation_config" key."""
    from importlib import resources

    files = sorted(
        p.name for p in resources.files("musicgen_onnx.export.configs").iterdir() if p.name.endswith(".json")
    )
    assert files == sorted(f"{n.split('/', 1)[1]}.json" for n in rw.KNOWN_CHECKPOINTS)
    data = json.loads(
        resources.files("musicgen_onnx.export.configs").joinpath("musicgen-stereo-small.json").read_text()
    )
    assert data["generation_config"] == HUB_GENERATION
    assert data["model_type"] == "musicgen"
    assert set(data) >= {"text_encoder", "audio_encoder", "decoder"}


def test_stereo_small_parameter_counts_on_meta_device():
    config = rw.load_shipped_config("musicgen-stereo-small")
    with torch.device("meta"):
        model = transformers.MusicgenForConditionalGeneration(config)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    # docs/design.md §16: decoder 436 M, T5 110 M, EnCodec 57 M (within 2 %).
    assert count(model.decoder) == pytest.approx(436e6, rel=0.02)
    assert count(model.text_encoder) == pytest.approx(110e6, rel=0.02)
    assert count(model.audio_encoder) == pytest.approx(57e6, rel=0.02)
    assert model.enc_to_dec_proj.in_features == 768 and model.enc_to_dec_proj.out_features == 1024
    assert len(model.decoder.lm_heads) == 8


@pytest.mark.parametrize("bad", ["facebook/musicgen-tiny", "musicgen-xl", "stereo-small", "", "facebook/encodec_32khz"])
def test_unknown_names_raise_clear_value_error(bad):
    for fn in (rw.load_shipped_config, rw.build_random_model, rw.is_melody, rw.load_shipped_generation_config):
        with pytest.raises(ValueError, match="facebook/musicgen-stereo-small") as info:
            fn(bad)
        assert "unknown MusicGen checkpoint" in str(info.value)


def test_standin_tokenizer_conventions():
    tok = build_standin_tokenizer(512)
    assert (tok.token_to_id("<pad>"), tok.token_to_id("</s>"), tok.token_to_id("<unk>")) == (0, 1, 2)
    assert tok.get_vocab_size() <= 512
    encs = tok.encode_batch(PROMPTS)
    lengths = {len(e.ids) for e in encs}
    assert len(lengths) == 1  # padded to the longest
    for e in encs:
        n = sum(e.attention_mask)
        assert e.ids[n - 1] == 1  # </s> appended
        assert all(i == 0 for i in e.ids[n:])  # right padding with <pad>
        assert max(e.ids) < 512
    assert build_standin_tokenizer(512).to_str() == tok.to_str()  # deterministic
    big = build_standin_tokenizer(32128)
    assert max(max(e.ids) for e in big.encode_batch(PROMPTS)) < 32128
    with pytest.raises(ValueError):
        build_standin_tokenizer(3)


@pytest.mark.parametrize("fixture", ["tiny_stereo_checkpoint", "tiny_mono_checkpoint"])
def test_tiny_checkpoint_round_trip(fixture, request):
    from tiny_checkpoint import build_tiny_checkpoint
    from tokenizers import Tokenizer

    path = request.getfixturevalue(fixture)
    channels = 2 if "stereo" in fixture else 1
    model = transformers.MusicgenForConditionalGeneration.from_pretrained(path)
    assert model.config.decoder.num_codebooks == 4 * channels
    assert model.config.decoder.audio_channels == channels
    assert model.config.audio_encoder.frame_rate == 50 and model.config.audio_encoder.num_quantizers == 4
    assert model.config.text_encoder.d_model != model.config.decoder.hidden_size
    assert model.enc_to_dec_proj is not None

    gen = json.loads((path / "generation_config.json").read_text())
    assert {k: gen[k] for k in HUB_GENERATION} == HUB_GENERATION

    # Same seed -> same weights (the fixture's file vs a fresh in-memory build).
    fresh = build_tiny_checkpoint(path.parent / f"{path.name}_again", channels=channels, seed=0)
    again = transformers.MusicgenForConditionalGeneration.from_pretrained(fresh)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    # lm_heads are scaled x8 (std ~ 0.16 instead of 0.02).
    assert float(model.decoder.lm_heads[0].weight.detach().std()) > 0.1

    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    hf = hf_tok(PROMPTS, padding=True, return_tensors="np")
    encs = raw.encode_batch(PROMPTS)  # padding to the longest is stored in tokenizer.json
    np.testing.assert_array_equal(hf["input_ids"], np.array([e.ids for e in encs]))
    np.testing.assert_array_equal(hf["attention_mask"], np.array([e.attention_mask for e in encs]))
    assert hf["input_ids"].max() < model.config.text_encoder.vocab_size


@pytest.mark.parametrize("fixture", ["tiny_stereo_checkpoint", "tiny_mono_checkpoint"])
def test_transformers_generate_on_tiny_checkpoint(fixture, request):
    path = request.getfixturevalue(fixture)
    channels = 2 if "stereo" in fixture else 1
    model = transformers.MusicgenForConditionalGeneration.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    inputs = tok(PROMPTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        audio = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    frames = 1 + 8 - 4  # delay pattern: 1 + max_new_tokens - C frames, C = 4 codebooks per channel
    assert tuple(audio.shape) == (2, channels, frames * 640)
    assert torch.isfinite(audio).all()

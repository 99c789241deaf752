"""A tiny random-weight MusicGen-Melody checkpoint for tests (no download), built like ``tiny_checkpoint``.

Same tiny T5 and EnCodec as ``tiny_checkpoint``; the decoder is a ``MusicgenMelodyForCausalLM`` (no
cross-attention: text and chroma are a prefix) with 4 (mono) or 8 (stereo) codebooks, and ``chroma_length`` is
shrunk (default 24 chroma frames instead of 235) so the prefix stays short. The lm_heads are scaled x8 as in
``tiny_checkpoint`` (greedy argmax must not be a near-tie, docs/design.md §16).

Usage: ``python tests/tiny_melody_checkpoint.py OUT_DIR [--mono] [--seed N]``;
or import ``build_tiny_melody_checkpoint``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tiny_checkpoint import HUB_GENERATION_CONFIG, LM_HEAD_SCALE, tiny_config

TINY_CHROMA_LENGTH = 24
#: transformers' melody generate without text feeds the decoder start id (2048) to T5 (masked out afterwards):
#: the tiny T5 vocabulary must contain it
TINY_MELODY_TEXT_VOCAB = 4096


def tiny_melody_config(
    *,
    channels: int = 2,
    chroma_length: int = TINY_CHROMA_LENGTH,
    decoder_hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 512,
):
    """The ``MusicgenMelodyConfig`` of the tiny melody checkpoint."""
    from transformers import MusicgenMelodyConfig, MusicgenMelodyDecoderConfig

    base = tiny_config(
        channels=channels, decoder_hidden=decoder_hidden, layers=layers, heads=heads, max_positions=max_positions
    )
    base.text_encoder.vocab_size = TINY_MELODY_TEXT_VOCAB
    decoder = MusicgenMelodyDecoderConfig(
        vocab_size=2048,
        max_position_embeddings=max_positions,
        num_hidden_layers=layers,
        ffn_dim=4 * decoder_hidden,
        num_attention_heads=heads,
        hidden_size=decoder_hidden,
        activation_function="gelu",
        dropout=0.1,
        num_codebooks=4 * channels,
        audio_channels=channels,
        pad_token_id=2048,
        bos_token_id=2048,
        tie_word_embeddings=False,
    )
    return MusicgenMelodyConfig(
        text_encoder=base.text_encoder,
        audio_encoder=base.audio_encoder,
        decoder=decoder,
        num_chroma=12,
        chroma_length=chroma_length,
    )


def build_tiny_melody_checkpoint(
    out_dir,
    *,
    channels: int = 2,
    seed: int = 0,
    chroma_length: int = TINY_CHROMA_LENGTH,
    max_positions: int = 512,
) -> Path:
    """Build and save a tiny random-weight MusicgenMelodyForConditionalGeneration into ``out_dir``."""
    import torch
    from musicgen_onnx.export.random_weights import randomize_codebooks
    from musicgen_onnx.export.standin_tokenizer import build_standin_tokenizer, save_standin_tokenizer
    from transformers import GenerationConfig, MusicgenMelodyForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tf_logger = logging.getLogger("transformers")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        config = tiny_melody_config(channels=channels, chroma_length=chroma_length, max_positions=max_positions)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MusicgenMelodyForConditionalGeneration(config)
            randomize_codebooks(model)
            with torch.no_grad():
                # transformers initialises the chroma projection's bias to zero and its weight small: give every
                # chroma bin a clearly different embedding so the melody visibly steers the tiny model
                model.audio_enc_to_dec_proj.weight.normal_(0.0, 1.0)
                model.audio_enc_to_dec_proj.bias.normal_(0.0, 0.1)
                for head in model.decoder.lm_heads:
                    head.weight.mul_(LM_HEAD_SCALE)
        model = model.to(torch.float32).eval()
        model.generation_config = GenerationConfig(**HUB_GENERATION_CONFIG)
        model.save_pretrained(out)
    finally:
        tf_logger.setLevel(level)
    save_standin_tokenizer(build_standin_tokenizer(config.text_encoder.vocab_size), out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random-weight MusicGen-Melody checkpoint for tests.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--mono", action="store_true", help="1 channel / 4 codebooks (default: stereo, 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_melody_checkpoint(args.out_dir, channels=1 if args.mono else 2, seed=args.seed))


if __name__ == "__main__":
    main()

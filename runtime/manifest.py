"""The runtime contract: ``manifest.json`` next to the exported graphs.

The exporter writes it, the runtime reads it; nothing else is shared between the two sides, so the
runtime never needs torch, transformers or the graph wrappers. Everything the generation loop must
know (codebook layout, token ids, frame and sample rates, I/O names, defaults) lives here.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "musicgen-onnx"
FORMAT_VERSION = 3
#: Oldest manifest this runtime reads: version 1 static-cache decoders took a ``past_length`` input, version 2
#: one position per column ([S]) instead of one per row and column ([B, S]).
MIN_FORMAT_VERSION = 3


#: The graphs an export directory holds, by role (melody checkpoints: melody_prefix instead of cross_kv).
GRAPH_ROLES = (
    "text_encoder",
    "cross_kv",
    "melody_prefix",
    "decoder",
    "sampler",
    "encodec_decode",
    "encodec_stream",
    "encodec_encode",
)
#: Graphs the runtime cannot work without (the EnCodec encoder is only needed for audio prompts, the
#: sampler for token selection on the device, the stateful EnCodec decoder makes streaming cheaper).
REQUIRED_GRAPHS = ("text_encoder", "cross_kv", "decoder", "encodec_decode")
#: The same for melody checkpoints (conditioning "prefix": chroma + text states before the tokens).
REQUIRED_MELODY_GRAPHS = ("text_encoder", "melody_prefix", "decoder", "encodec_decode")
CONDITIONINGS = ("cross_attention", "prefix")


class ManifestError(ValueError):
    """The export directory or its manifest is missing, corrupt, or from an unsupported format."""


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file: where it is, what it takes and returns, and its checksum."""

    file: str
    inputs: list[str]
    outputs: list[str]
    sha256: str = ""
    external_data: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AudioSpec:
    sampling_rate: int
    frame_rate: int
    hop_length: int
    channels: int
    codec_codebooks: int
    codec_vocab_size: int


class KVCache(str, enum.Enum):
    """How the decoder graph holds its self-attention cache (manifest ``decoder.kv_cache``, docs/design.md §6).

    ``STATIC``: a preallocated buffer of every position, updated in place by GroupQueryAttention (position_ids and
    total_sequence_length inputs), in the precision's float type; ``STATIC_INT8``: the same buffer in int8 with
    calibrated per-channel scales inside the graph (CPU); ``CONCAT``: past/present tensors that grow by one
    position per step (requests run one at a time).
    """

    STATIC = "static"
    STATIC_INT8 = "static-int8"
    CONCAT = "concat"

    def __str__(self) -> str:
        return self.value

    @property
    def in_place(self) -> bool:
        """A preallocated buffer updated in place, with per-row positions (continuous batching)."""
        return self is not KVCache.CONCAT


@dataclass(frozen=True)
class DecoderSpec:
    num_codebooks: int
    vocab_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    max_positions: int
    pad_token_id: int
    decoder_start_token_id: int
    #: how the decoder holds its self-attention cache (see ``KVCache``)
    kv_cache: KVCache = KVCache.CONCAT
    #: The step graph can be captured as a CUDA graph: static cache, fp16 (CUDA GroupQueryAttention
    #: runs fp16 only) and the placement check of ``export.cuda_graph_check`` passed.
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kv_cache", KVCache(self.kv_cache))  # from JSON: the value; unknown: ValueError


@dataclass(frozen=True)
class TextSpec:
    tokenizer_file: str
    pad_token_id: int
    hidden_size: int
    max_tokens: int


@dataclass(frozen=True)
class MelodySpec:
    """Chroma conditioning of the melody checkpoints (MusicgenMelodyFeatureExtractor's parameters).

    Mono audio at ``sampling_rate``, at most ``max_seconds``; power spectrogram with a periodic Hann window of
    ``n_fft`` samples every ``hop_length``; ``num_chroma`` bins; the decoder prefix holds ``chroma_length``
    frames. ``position_table``: positions the melody decoder's sinusoid table (and so its cache) can hold.
    """

    sampling_rate: int
    n_fft: int
    hop_length: int
    num_chroma: int
    chroma_length: int
    max_seconds: float
    position_table: int


@dataclass(frozen=True)
class CodecStreamSpec:
    """How the stateful EnCodec graph (role ``encodec_stream``) is fed (docs/design.md §10).

    ``code_context``: code frames each side of a chunk that conv0 reads (the runtime reflects them at a clip's
    edges); ``left_context`` / ``right_context``: latent frames before / after an emitted frame that reach it
    through the post-LSTM convolutions (measured at export), re-run as the overlap of the next chunk.
    """

    code_context: int
    left_context: int
    right_context: int


@dataclass(frozen=True)
class GenerationDefaults:
    """Generation defaults as transformers resolves them for the checkpoint."""

    do_sample: bool = True
    guidance_scale: float = 3.0
    max_length: int = 1500
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 1.0


@dataclass(frozen=True)
class Manifest:
    source: str
    random_weights: bool
    precision: str
    audio: AudioSpec
    decoder: DecoderSpec
    text: TextSpec
    generation: GenerationDefaults
    graphs: dict[str, GraphSpec]
    files: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    exporter: dict[str, str] = field(default_factory=dict)
    #: "cross_attention" (text models) or "prefix" (melody: chroma + text states before the tokens)
    conditioning: str = "cross_attention"
    melody: MelodySpec | None = None
    #: the decoder's weight format per module (export.precision_plan): name, default, rules, MatMuls per format;
    #: empty for fp32 / fp16 and for exports before plans existed
    precision_plan: dict[str, Any] = field(default_factory=dict)
    #: present when the export has the stateful EnCodec graph (exports before it stream through the overlap path)
    codec_stream: CodecStreamSpec | None = None
    #: EnCodec's decoder graphs with int8 LSTM weights (export.codec_lstm): the format per graph ("graphs"), the
    #: SNR of each one's audio against PyTorch measured at export ("snr_db") and the bound ("min_snr_db");
    #: empty where every LSTM is fp32
    codec_lstm: dict[str, Any] = field(default_factory=dict)

    # ---- derived facts the loop uses -------------------------------------------------------------
    def codec_lstm_format(self, role: str = "encodec_decode") -> str:
        """The LSTM weights of an EnCodec decoder graph: "int8" or "fp32" (exports before the field: fp32)."""
        return str(self.codec_lstm.get("graphs", {}).get(role, "fp32"))

    @property
    def codebooks_per_channel(self) -> int:
        """C in the delay pattern: K codebooks interleaved over the audio channels."""
        return self.decoder.num_codebooks // self.audio.channels

    # ---- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"corrupt manifest: expected a JSON object, got {type(data).__name__}")
        try:
            fmt = data.get("format")
            version = int(data.get("format_version", -1))
            if fmt != FORMAT_NAME:
                raise ManifestError(f"not a {FORMAT_NAME} manifest (format={fmt!r})")
            if version > FORMAT_VERSION:
                raise ManifestError(
                    f"manifest format_version {version} is newer than this runtime supports "
                    f"(<= {FORMAT_VERSION}); upgrade musicgen-onnx"
                )
            if version < 1:
                raise ManifestError(f"invalid manifest format_version {version}")
            if version < MIN_FORMAT_VERSION:
                raise ManifestError(
                    f"manifest format_version {version} is older than this runtime supports "
                    f"(>= {MIN_FORMAT_VERSION}): its decoder graph has other inputs; re-export the model "
                    "with this version of musicgen-onnx"
                )
            return cls(
                source=str(data["source"]),
                random_weights=bool(data["random_weights"]),
                precision=str(data["precision"]),
                audio=AudioSpec(**data["audio"]),
                decoder=DecoderSpec(**data["decoder"]),
                text=TextSpec(**data["text"]),
                generation=GenerationDefaults(**data["generation"]),
                graphs={role: GraphSpec(**spec) for role, spec in data["graphs"].items()},
                files=dict(data.get("files", {})),
                format=fmt,
                format_version=version,
                exporter=dict(data.get("exporter", {})),
                conditioning=str(data.get("conditioning", "cross_attention")),
                melody=MelodySpec(**data["melody"]) if data.get("melody") else None,
                precision_plan=dict(data.get("precision_plan", {})),
                codec_stream=CodecStreamSpec(**data["codec_stream"]) if data.get("codec_stream") else None,
                codec_lstm=dict(data.get("codec_lstm", {})),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"corrupt manifest: {exc!r}") from exc

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory not found: {directory}")
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {directory} is not a musicgen-onnx export (create one with `musicgen-onnx export`)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"corrupt manifest {path}: {exc}") from exc
        try:
            manifest = cls.from_dict(data)
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from exc
        if manifest.conditioning not in CONDITIONINGS or (manifest.conditioning == "prefix") != bool(manifest.melody):
            raise ManifestError(f"manifest {path}: unknown conditioning {manifest.conditioning!r} or no melody section")
        required = REQUIRED_MELODY_GRAPHS if manifest.conditioning == "prefix" else REQUIRED_GRAPHS
        missing = [role for role in required if role not in manifest.graphs]
        if missing:
            raise ManifestError(f"manifest {path} lacks required graphs: {', '.join(missing)}")
        manifest.check_paths(directory)
        check_start_token(manifest.decoder.decoder_start_token_id, manifest.decoder.pad_token_id)
        return manifest

    def file_names(self) -> list[str]:
        """Every file this manifest points at: graphs, their external data, the tokenizer, checksummed files."""
        names = [self.text.tokenizer_file, *self.files]
        for spec in self.graphs.values():
            names += [spec.file, *spec.external_data]
        return names

    def check_paths(self, directory: str | Path) -> None:
        """Refuse file names that resolve outside ``directory`` (absolute, ``..``, or a symlink leading out):
        a manifest must not make the runtime read or hash arbitrary files."""
        root = Path(directory).resolve()
        for name in self.file_names():
            target = (root / name).resolve()
            if Path(name).is_absolute() or not target.is_relative_to(root) or target == root:
                raise ManifestError(
                    f"manifest in {directory} names {name!r}, which is outside the model directory; "
                    "file names must be relative paths inside it"
                )


def check_start_token(decoder_start_token_id: int, pad_token_id: int) -> None:
    """The runtime starts every sequence with the pad token, which is what transformers does only while
    ``decoder_start_token_id == pad_token_id`` (true for every released checkpoint). A fine-tune where they
    differ would silently diverge from transformers (its delay pattern is then filled with the start
    token, and the pad filter at the end keeps it), so such a checkpoint is refused."""
    if decoder_start_token_id != pad_token_id:
        raise ManifestError(
            f"decoder_start_token_id ({decoder_start_token_id}) differs from pad_token_id ({pad_token_id}): "
            "musicgen-onnx supports only checkpoints where they are equal (every released MusicGen; transformers "
            f"fills the delay pattern with the start token then), set generation_config.decoder_start_token_id = "
            f"{pad_token_id} if that is what the fine-tune meant"
        )


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_files(directory: str | Path, manifest: Manifest, roles: tuple[str, ...] | None = None) -> None:
    """Check that every file the manifest names exists and matches its sha256.

    Raises FileNotFoundError for a missing file and ManifestError for a checksum mismatch, so a
    truncated copy fails at load time with a message, not mid-generation inside onnxruntime.
    """
    directory = Path(directory)
    checks: list[tuple[str, str]] = []
    for role, spec in manifest.graphs.items():
        if roles is not None and role not in roles:
            continue
        checks.append((spec.file, spec.sha256))
        checks.extend((name, manifest.files.get(name, "")) for name in spec.external_data)
    checks.append((manifest.text.tokenizer_file, manifest.files.get(manifest.text.tokenizer_file, "")))
    for name, expected in checks:
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the export (named in {MANIFEST_NAME})")
        if expected and sha256_file(path) != expected:
            raise ManifestError(
                f"{path} does not match its sha256 in {MANIFEST_NAME}: the file is corrupt or was "
                "replaced; re-copy or re-export the model directory"
            )

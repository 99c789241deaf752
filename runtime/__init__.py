"""musicgen-onnx runtime: numpy + onnxruntime + tokenizers; never imports torch or transformers."""

from .manifest import Manifest, ManifestError
from .model import MusicGen
from .options import SamplingOptions
from .pipeline import TextToAudioPipeline, pipeline
from .requests import QueueFullError, RequestCancelledError
from .sessions import ProviderUnavailableError
from .submission import GenerationResult, Submission

__all__ = [
    "GenerationResult",
    "Manifest",
    "ManifestError",
    "MusicGen",
    "ProviderUnavailableError",
    "QueueFullError",
    "RequestCancelledError",
    "SamplingOptions",
    "Submission",
    "TextToAudioPipeline",
    "pipeline",
]

"""musicgen-onnx runtime: numpy + onnxruntime + tokenizers; never imports torch or transformers."""

from .manifest import Manifest, ManifestError
from .model import GenerationResult, MusicGen
from .options import SamplingOptions
from .pipeline import TextToAudioPipeline, pipeline
from .sessions import ProviderUnavailableError

__all__ = [
    "GenerationResult",
    "Manifest",
    "ManifestError",
    "MusicGen",
    "ProviderUnavailableError",
    "SamplingOptions",
    "TextToAudioPipeline",
    "pipeline",
]

"""A small T5-like stand-in tokenizer for random-weight checkpoints and tests.

The real MusicGen checkpoints use the t5-base SentencePiece tokenizer (32128 ids), which cannot be downloaded here.
This module builds a Unigram tokenizer with the same conventions from a small built-in corpus of music descriptions
(piece scores are log frequencies computed here, not trained, so the result is deterministic):

- id 0 ``<pad>``, id 1 ``</s>``, id 2 ``<unk>``;
- NFKC normalization, whitespace collapsed, Metaspace pre-tokenization (``▁`` word prefix), like T5;
- a post-processor that appends ``</s>`` to every sequence;
- padding on the right with id 0 (enabled on the returned tokenizer, so it is also stored in ``tokenizer.json``).

Every id is < ``vocab_size``. Only the ``tokenizers`` library is needed; :func:`save_standin_tokenizer` imports
transformers lazily to write the files ``AutoTokenizer.from_pretrained`` expects.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

PAD_TOKEN, PAD_ID = "<pad>", 0
EOS_TOKEN, EOS_ID = "</s>", 1
UNK_TOKEN, UNK_ID = "<unk>", 2
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)

# A few hundred words of music descriptions, in the style of MusicGen prompts.
_CORPUS = """
80s pop track with bassy drums and synth.
90s rock song with loud guitars and heavy drums.
A cheerful country song with acoustic guitars, fiddle and a steady beat.
Lofi slow bpm electro chill with organic samples and soft vinyl crackle.
An energetic hip hop beat with punchy kicks, crisp snares and a deep bass line.
Ambient soundscape with warm pads, gentle piano and distant bells, slow and dreamy.
Epic orchestral music with strings, brass, choir and thundering timpani for a movie trailer.
Smooth jazz with a walking upright bass, brushed drums, saxophone solo and mellow electric piano.
Upbeat electronic dance music at 128 bpm with a driving four on the floor kick and bright synth leads.
Classical string quartet playing a melancholic melody in a minor key.
Reggae groove with offbeat guitar skanks, organ bubble and a relaxed tempo.
Funky disco track with slap bass, wah guitar, horns and a groovy hi-hat pattern.
Heavy metal riff with distorted guitars, double kick drums and aggressive vocals.
Calm acoustic folk tune with fingerpicked guitar, harmonica and soft humming.
Dark techno with a pounding kick, industrial percussion and hypnotic arpeggios.
Bossa nova with nylon guitar, light percussion and a warm flute melody.
Cinematic piano ballad that builds slowly with strings and ends softly.
Retro synthwave with gated reverb drums, analog bass and a nostalgic lead.
Traditional Irish jig with tin whistle, bodhran and fiddle, fast and lively.
Blues shuffle with a gritty electric guitar, harmonica and a swinging rhythm section.
Happy children's song with xylophone, ukulele, hand claps and whistling.
Tense suspenseful score with low strings, pulsing synths and sharp percussion hits.
Latin salsa with congas, timbales, piano montuno and a bright trumpet section.
Minimal house with a deep groove, shuffled hats, chopped vocal samples and sub bass.
Meditative drone with singing bowls, soft wind chimes and a low sustained hum.
Indie rock with jangly guitars, a catchy chorus, tambourine and energetic drums.
Gospel choir singing with organ, piano and clapping, joyful and uplifting.
Drum and bass at 174 bpm with breakbeats, rolling bass and atmospheric pads.
A relaxing guitar and piano duet for studying, soft, warm and peaceful.
Marching band with snare drums, tubas, trumpets and cymbals in a parade.
Video game chiptune with square wave leads, arpeggiated chords and noise drums.
Flamenco guitar with rapid strumming, palm claps and passionate rhythm.
Trap beat with rolling hi hats, booming 808 bass and dark bells.
Baroque harpsichord piece with counterpoint, ornaments and a lively tempo.
Soulful R&B slow jam with smooth vocals, electric piano and a laid back groove.
Sad violin solo over a quiet piano, emotional, slow and expressive.
Tropical house with steel drums, marimba, plucked synths and a summer vibe.
Punk rock with fast power chords, shouting vocals and a frantic beat.
Celtic harp melody, gentle and magical, with soft strings in the background.
Afrobeat groove with talking drums, horns, shakers and interlocking guitars.
Big band swing with brass sections, a walking bass and a swinging ride cymbal.
Dubstep drop with wobble bass, heavy snares and glitchy effects.
Lullaby with music box, soft bells and a slow gentle melody for sleeping.
Grand opera aria with soprano voice and full orchestra, dramatic and powerful.
Sitar and tabla raga, slowly unfolding, with a drone and rhythmic cycles.
Vintage 1950s rock and roll with boogie piano, saxophone and upright bass.
Space ambient music with shimmering textures, reverb and slowly evolving tones.
A short jingle with bright bells and a cheerful whistle, loud and clear.
Bass, drums, guitar, piano, violin, cello, flute, clarinet, oboe, trumpet, trombone, horn, harp, organ, voice.
Fast, slow, loud, quiet, happy, sad, calm, energetic, bright, dark, warm, cold, soft, hard, deep, high, low.
"""


def _corpus_words() -> list[str]:
    text = unicodedata.normalize("NFKC", _CORPUS)
    return re.findall(r"\S+", text)


def _pieces(vocab_size: int) -> list[tuple[str, float]]:
    """Deterministic Unigram vocabulary: specials, the meta symbol, an alphabet, whole words, then substrings.

    Scores are log relative frequencies over the corpus (like SentencePiece's), ties broken by the piece itself.
    """
    words = _corpus_words()
    word_counts = Counter("▁" + w for w in words)
    char_counts = Counter(c for w in words for c in w)
    sub_counts: Counter[str] = Counter()
    for word, n in word_counts.items():
        for length in range(2, min(len(word), 8) + 1):
            for i in range(len(word) - length + 1):
                sub_counts[word[i : i + length]] += n
    alphabet = set(string.ascii_letters + string.digits + string.punctuation) | set(char_counts)
    total = float(sum(char_counts.values()) + len(words))

    def score(count: int) -> float:
        return math.log(max(count, 1) / total)

    budget = vocab_size - len(SPECIAL_TOKENS)
    pieces: list[tuple[str, float]] = [(t, 0.0) for t in SPECIAL_TOKENS]
    seen = set(SPECIAL_TOKENS)

    def add(candidates: list[tuple[str, int]]) -> None:
        for piece, count in candidates:
            if len(pieces) - len(SPECIAL_TOKENS) >= budget:
                return
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, score(count)))

    add([("▁", len(words))])
    # Single characters (those in the corpus first) so any ASCII text tokenizes without <unk>; rare chars get a
    # low score so whole words and substrings win.
    add(sorted(((c, char_counts.get(c, 0)) for c in alphabet), key=lambda x: (-x[1], x[0])))
    add(sorted(word_counts.items(), key=lambda x: (-x[1], x[0])))
    add(sorted(((p, n) for p, n in sub_counts.items() if n >= 2), key=lambda x: (-x[1], -len(x[0]), x[0])))
    return pieces


def build_standin_tokenizer(vocab_size: int) -> Tokenizer:
    """Build a T5-like Unigram tokenizer from the built-in corpus; every id is < ``vocab_size``.

    Deterministic: the same ``vocab_size`` gives the same tokenizer. The corpus yields about a thousand pieces, so
    for a large ``vocab_size`` (e.g. t5-base's 32128) most ids are simply never produced, as with any tokenizer
    smaller than its embedding table. Raises ValueError when ``vocab_size`` cannot hold the special tokens and
    the meta symbol.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 1}, got {vocab_size}")
    tok = Tokenizer(models.Unigram(_pieces(vocab_size), unk_id=UNK_ID, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, EOS_ID)],
    )
    tok.add_special_tokens([PAD_TOKEN, EOS_TOKEN, UNK_TOKEN])
    tok.enable_padding(direction="right", pad_id=PAD_ID, pad_token=PAD_TOKEN)

    assert tok.get_vocab_size(with_added_tokens=True) <= vocab_size
    for token, idx in ((PAD_TOKEN, PAD_ID), (EOS_TOKEN, EOS_ID), (UNK_TOKEN, UNK_ID)):
        if tok.token_to_id(token) != idx:
            raise RuntimeError(f"stand-in tokenizer: {token!r} got id {tok.token_to_id(token)}, expected {idx}")
    return tok


def save_standin_tokenizer(tokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer.json`` plus the transformers files so ``AutoTokenizer.from_pretrained(directory)`` works.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (or a transformers fast tokenizer, whose backend is used). The
    transformers tokenizer loaded back gives the same ids as ``tokenizers.Tokenizer.from_file(directory /
    "tokenizer.json")``. Returns the directory.
    """
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        model_max_length=512,
    )
    wrapped.save_pretrained(str(directory))
    # save_pretrained writes the backend as transformers configured it; overwrite with the tokenizer as given so
    # tokenizer.json keeps its post-processor and right padding with <pad> (id 0).
    backend.save(str(directory / "tokenizer.json"))
    return directory


__all__ = [
    "EOS_ID",
    "EOS_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "UNK_TOKEN",
    "build_standin_tokenizer",
    "save_standin_tokenizer",
]

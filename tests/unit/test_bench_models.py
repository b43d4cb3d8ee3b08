"""The benchmark's SD3.5 pipelines, built on the meta device (no memory, no time): the
published configs give the parameter counts the H100 runs measured (docs/benchmarks.md)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from sd35_provision import tinymodel  # noqa: E402
from sd35_provision.bench import models  # noqa: E402

META = torch.device("meta")

# Parameters per component, as the H100 runs built them (docs/benchmarks-h100/*.json: bf16 bytes / 2).
COMMON = {
    "vae": 83_819_683,
    "text_encoder": 123_650_304,
    "text_encoder_2": 694_659_840,
    "text_encoder_3": 4_762_310_656,
}


@pytest.mark.parametrize("spec,transformer", [(models.LARGE, 8_056_627_520), (models.MEDIUM, 2_243_171_520)])
def test_published_configs_give_the_measured_sizes(spec, transformer):
    pipe = models.build_pipeline(spec, META, torch.bfloat16)
    counts = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }
    assert counts == {**COMMON, "transformer": transformer}
    assert all(p.dtype == torch.bfloat16 and p.is_meta for p in pipe.transformer.parameters())
    assert pipe.vae.config.scaling_factor == 1.5305 and pipe.vae.config.shift_factor == 0.0609
    assert pipe.scheduler.config.shift == 3.0
    assert (pipe.tokenizer.model_max_length, pipe.tokenizer_3.model_max_length) == (77, 256)


def test_build_transformer_has_the_pipelines_weights():
    """A mode's fresh transformer is the pipeline's own (same seed offset): errors compare like with like."""
    spec = models.tiny_spec()
    pipe = tinymodel.build_tiny_pipeline(seed=0)
    fresh = models.build_transformer(spec, torch.device("cpu"), torch.float32)
    reference = pipe.transformer.state_dict()
    assert fresh.state_dict().keys() == reference.keys()
    assert all(torch.equal(t, reference[k]) for k, t in fresh.state_dict().items())
    other = tinymodel.build_sd3_transformer(spec.transformer, seed=1)
    assert not torch.equal(other.state_dict()["proj_out.weight"], reference["proj_out.weight"])

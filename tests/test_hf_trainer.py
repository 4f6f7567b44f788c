"""LeanKDTrainer: a transformers.Trainer that distills. Its loss equals leankd's on the same batch, it trains a tiny
model, gradient accumulation gives the full batch's gradient, and the teacher stays frozen in eval mode."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from leankd.kd.losses import KD, LossInputs, mix  # noqa: E402

from test_text import sentences, tiny_bert  # noqa: E402


def _models(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tiny_bert(tmp_path / "bert", layers=2)
    quiet = dict(num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(folder, **quiet)
    torch.manual_seed(1)
    student = AutoModelForSequenceClassification.from_pretrained(folder, **quiet)
    return AutoTokenizer.from_pretrained(folder), teacher, student


def _dataset(tokenizer, n=32):
    rows = sentences(n, seed=3)
    enc = tokenizer([s for _, s in rows], truncation=True, max_length=32)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": y}
            for i, (y, _) in enumerate(rows)]


def _trainer(tmp_path, tokenizer, teacher, student, **kw):
    from transformers import DataCollatorWithPadding, TrainingArguments

    from leankd.integrations.hf_trainer import LeanKDTrainer

    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_train_epochs=2,
                             learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
                             **kw.pop("args", {}))
    return LeanKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_dataset(tokenizer),
                         data_collator=DataCollatorWithPadding(tokenizer), **kw)


def _batch(tokenizer, n=8):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)(_dataset(tokenizer, n))


def test_loss_equals_leankds_loss_on_the_same_batch(tmp_path):
    tokenizer, teacher, student = _models(tmp_path)
    trainer = _trainer(tmp_path, tokenizer, teacher, student, alpha=0.7, temperature=3.0)
    batch = _batch(tokenizer)
    student.eval()
    with torch.no_grad():
        got = trainer.compute_loss(student, dict(batch))
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        expected = mix(0.7, 3.0)(LossInputs(student=student(**inputs).logits, targets=batch["labels"],
                                            teacher=teacher(**inputs).logits))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    custom = _trainer(tmp_path, tokenizer, teacher, student, kd_loss=KD(2.0))
    with torch.no_grad():
        assert float(custom.compute_loss(student, dict(batch))) == pytest.approx(float(KD(2.0)(LossInputs(
            student=student(**inputs).logits, targets=batch["labels"], teacher=teacher(**inputs).logits))))


def test_trains_a_tiny_model_with_a_frozen_teacher(tmp_path):
    tokenizer, teacher, student = _models(tmp_path)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _trainer(tmp_path, tokenizer, teacher, student, teacher_device="cpu")
    teacher.train()  # a careless caller: the trainer must still run it in eval mode
    result = trainer.train()
    assert result.training_loss == result.training_loss and result.training_loss > 0  # finite
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not trainer.teacher.training and not any(p.requires_grad for p in teacher.parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8 and all(loss == loss for loss in losses)  # 32 rows / 8 x 2 epochs, all logged, finite


def test_gradient_accumulation_gives_the_full_batch_gradient(tmp_path):
    tokenizer, teacher, student = _models(tmp_path)
    trainer = _trainer(tmp_path, tokenizer, teacher, student)
    batch = _batch(tokenizer, 8)
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]

    def grads(batches, steps):
        student.zero_grad(set_to_none=True)
        trainer.current_gradient_accumulation_steps = steps
        for b in batches:
            trainer.training_step(student, dict(b))
        return [p.grad.clone() for p in student.parameters() if p.grad is not None]

    full = grads([batch], 1)
    accumulated = grads(halves, 2)  # both halves have the same padded width as the full batch: same math
    assert len(full) == len(accumulated) > 0
    for a, b in zip(full, accumulated):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_batches_without_labels_are_a_clear_error(tmp_path):
    tokenizer, teacher, student = _models(tmp_path)
    trainer = _trainer(tmp_path, tokenizer, teacher, student)
    batch = {k: v for k, v in _batch(tokenizer).items() if k != "labels"}
    with pytest.raises(ValueError, match="needs 'labels'"):
        trainer.compute_loss(student, batch)


# ----------------------------------------------------------------------------------- tokenizer / vocabulary check
def _other_tokenizer_teacher(tmp_path, extra=("zebra", "quartz", "noodle")):
    """A teacher whose WordPiece vocabulary puts other words first: the same text gets other token ids."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    from transformers import BertTokenizerFast

    from test_text import FILL, NEG, POS

    folder = tmp_path / "other"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra, *reversed(FILL), *NEG, *POS, "what", "who", "?"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.5)  # logits that vary with the words
    torch.manual_seed(2)
    BertForSequenceClassification(config).save_pretrained(folder)
    return tokenizer, AutoModelForSequenceClassification.from_pretrained(folder).eval()


def test_a_teacher_of_another_vocabulary_is_refused_without_its_tokenizer(tmp_path):
    tokenizer, _, student = _models(tmp_path)
    _, other = _other_tokenizer_teacher(tmp_path)
    with pytest.raises(ValueError, match=r"the teacher embeds \d+ tokens and the student \d+: they read different "
                                         r"tokenizers.*teacher_tokenizer="):
        _trainer(tmp_path, tokenizer, other, student)
    with pytest.raises(ValueError, match="pass it as processing_class="):
        _trainer(tmp_path, tokenizer, other, student, teacher_tokenizer=tokenizer)


@pytest.mark.parametrize("extra", [("zebra", "quartz", "noodle"), ()])  # other size / same size, other order
def test_with_both_tokenizers_the_teacher_reads_its_own_tokenization_of_the_text(tmp_path, extra):
    tokenizer, _, student = _models(tmp_path)
    t_tok, other = _other_tokenizer_teacher(tmp_path, extra)
    trainer = _trainer(tmp_path, tokenizer, other, student, teacher_tokenizer=t_tok, processing_class=tokenizer)
    batch = _batch(tokenizer)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in batch["input_ids"]]
    with torch.no_grad():
        expected = other(**t_tok(texts, padding=True, return_tensors="pt")).logits
        naive = other(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = trainer.teacher_logits({k: v for k, v in batch.items() if k != "labels"})
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, naive, atol=1e-3)  # the student's ids would have meant other words
    assert trainer.train().training_loss > 0


def test_sentence_pairs_keep_their_two_segments_for_the_teacher(tmp_path):
    tokenizer, _, student = _models(tmp_path)
    t_tok, other = _other_tokenizer_teacher(tmp_path)
    trainer = _trainer(tmp_path, tokenizer, other, student, teacher_tokenizer=t_tok, processing_class=tokenizer)
    pair = tokenizer(["the movie was good", "a dull plot"], ["it is great", "what ?"], padding=True,
                     return_tensors="pt")
    with torch.no_grad():
        expected = other(**t_tok(["the movie was good", "a dull plot"], ["it is great", "what ?"], padding=True,
                                 return_tensors="pt")).logits
    torch.testing.assert_close(trainer.teacher_logits(dict(pair)), expected, rtol=1e-5, atol=1e-5)


def test_the_same_tokenizer_twice_passes_the_ids_through(tmp_path):
    tokenizer, teacher, student = _models(tmp_path)
    trainer = _trainer(tmp_path, tokenizer, teacher, student, teacher_tokenizer=tokenizer, processing_class=tokenizer)
    assert trainer.teacher_tokenizer is None

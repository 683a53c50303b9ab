"""Trains through the Python bindings uniffi generates for pock_ffi::Trainer (the same ones
Kotlin and Swift get): open a plan, train, infer, save, resume, and a refused batch.

Run by ffi/tests/uniffi_python.rs: python uniffi_train.py BINDINGS_DIR PLAN CHECKPOINT
"""
import random
import sys

sys.path.insert(0, sys.argv[1])
import pock  # noqa: E402  (the generated module, next to libpock_ffi.so)

plan, checkpoint = sys.argv[2], sys.argv[3]
trainer = pock.Trainer.open(plan, 1)
batch, inputs, outputs = trainer.batch(), trainer.input_len(), trainer.output_len()
features, classes = inputs // batch, outputs // batch
assert trainer.targets_are_labels()
print(f"batch {batch}, {features} features, {classes} classes")

rng = random.Random(0)


def make_batch():
    x, y = [], []
    for _ in range(batch):
        row = [rng.uniform(-1.0, 1.0) for _ in range(features)]
        x.extend(row)
        y.append(max(range(classes), key=lambda c: row[c]))
    return x, y


try:
    trainer.train_step([0.0] * (inputs - 1), [0] * batch)
    raise SystemExit("a short batch was not refused")
except pock.PockError.Input as e:
    print("refused as expected:", e)

for step in range(60):
    x, y = make_batch()
    print(f"step {step} loss {trainer.train_step(x, y):.6f}")

x, y = make_batch()
logits = trainer.infer(x)
assert len(logits) == outputs
correct = sum(
    max(range(classes), key=lambda c: logits[i * classes + c]) == y[i] for i in range(batch)
)
print(f"inference: {correct} of {batch} correct")
trainer.save(checkpoint)

again = pock.Trainer.open(plan, 1)
again.resume(checkpoint)
assert again.optimizer_steps() == 60, again.optimizer_steps()
assert again.infer(x) == logits, "the resumed trainer infers differently"
print(f"resumed at optimizer step {again.optimizer_steps()}")

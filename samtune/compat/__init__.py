"""Workarounds for given versions of transformers and PyTorch, one module each.

Each module names the versions it targets and the upstream behaviour it works around, so that it
can be deleted when the version floor moves past it:

- `loss_normalisation`: transformers 5.x classification heads accept `num_items_in_batch` but
  ignore it (the stock update with accumulation is N times too large); transformers < 5.20 has no
  `Trainer.loss_is_scaled_for_ga`.
- `renamed_weights`: transformers 5.x checkpoints of some models (ViT) keep former parameter names
  that only `from_pretrained` maps back; the Trainer's own loads (resume, best model) miss them.
- `grad_scaler`: PyTorch's GradScaler (1.6-2.13) has no public way to skip a step by choice, and
  torch's LR scheduler warns when `optimizer.step` seems not to have run.
"""

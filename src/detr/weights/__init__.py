"""Weight files, in one place: where they come from, what they are, and the conversions between ecosystems.

- `hub`: the download cache, published files and HuggingFace hub ids;
- `identify`: what a file or a loaded checkpoint is, and its Config (`config_from_checkpoint`);
- `loading`: names, paths and hub ids -> a checkpoint dict or a built model (`load_pretrained`);
- `from_official`, `from_hf`, `from_paddle`: other layouts -> ours; `to_hf`: ours -> a transformers folder;
- `finetune`: the starting weights of a training run (`--weights`, `--frozen_weights`).
"""

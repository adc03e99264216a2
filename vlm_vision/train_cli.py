"""`vlm-vision train`: the flags of `TrainConfig`, one to one, plus `--merge` to export a trained folder.

    vlm-vision train --llm LLM --tower TOWER --data train.jsonl --media-root media/ --output-dir runs/s1 --stage 1
    vlm-vision train ... --output-dir runs/s2 --stage 2 --init-from runs/s1/final
    accelerate launch -m vlm_vision.cli train ...        # several GPUs / machines, DeepSpeed, FSDP
    vlm-vision train --merge runs/s2/final --merge-output runs/s2/merged [--llava-next-video runs/s2/hf]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from vlm_vision.train import TrainConfig

# Flags a training run must have (not required by argparse so that `--merge` can go alone).
_REQUIRED = ("llm", "tower", "data", "output_dir")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    run = parser.add_argument_group("what to train on")
    run.add_argument("--llm", help="base LLM: Hub id, transformers folder, or .gguf file")
    run.add_argument("--tower", help="CLIP vision tower: Hub id, folder or checkpoint")
    run.add_argument("--data", help="training records (LLaVA conversations, .json or .jsonl)")
    run.add_argument("--media-root", help="folder media paths are relative to (default: the data file's folder)")
    run.add_argument("--output-dir", help="log.jsonl, checkpoint-STEP/, final/, loss.png go here")
    run.add_argument("--eval-data", help="evaluation records (same format)")
    run.add_argument("--init-from", help="a previous run's final/ to start the projector from (stage 1 -> 2)")

    how = parser.add_argument_group("recipe")
    how.add_argument("--stage", type=int, choices=(1, 2), default=d["stage"],
                     help="1: projector only; 2: LoRA on the LLM + projector (default %(default)s)")
    how.add_argument("--max-steps", type=int, default=d["max_steps"], help="optimizer steps (default %(default)s)")
    how.add_argument("--batch-size", type=int, default=d["batch_size"], help="samples per process per micro-batch")
    how.add_argument("--grad-accum", type=int, default=d["grad_accum"], help="micro-batches per optimizer step")
    how.add_argument("--lr", type=float, help="LoRA lr in stage 2 (default 2e-4); the projector's when "
                                              "--projector-lr is not given (stage 1 default 1e-3)")
    how.add_argument("--projector-lr", type=float, help="projector lr (default: --lr, else 1e-3 stage 1 / 2e-5 stage 2)")
    how.add_argument("--lora-r", type=int, default=d["lora_r"])
    how.add_argument("--lora-alpha", type=int, default=d["lora_alpha"])
    how.add_argument("--lora-dropout", type=float, default=d["lora_dropout"])
    how.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    how.add_argument("--warmup-ratio", type=float, default=d["warmup_ratio"])
    how.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"])
    how.add_argument("--seed", type=int, default=d["seed"])
    how.add_argument("--train-new-token-embeddings", action="store_true",
                     help="train the embedding rows of <image>/<video> when they were added to the tokenizer")

    model = parser.add_argument_group("model")
    model.add_argument("--projector-type", default=d["projector_type"], help="linear, mlp2x_gelu, ... (default %(default)s)")
    model.add_argument("--num-frames", type=int, default=d["num_frames"], help="frames per raw video")
    model.add_argument("--max-length", type=int, default=d["max_length"], help="longest sequence, visual tokens included")
    model.add_argument("--pool-stride", type=int, default=d["pool_stride"])
    model.add_argument("--pool-mode", default=d["pool_mode"], choices=("average", "max", "bilinear"))
    model.add_argument("--select-layer", type=int, default=d["select_layer"], help="tower layer (default %(default)s)")
    model.add_argument("--video-newline", default=d["video_newline"], choices=("no_token", "one_token", "frame", "grid"))
    model.add_argument("--image-grid-pinpoints", type=_pinpoints, default=None, metavar="default|JSON",
                       help='anyres images (LLaVA-NeXT tiling): "default" for LLaVA-NeXT\'s canvases, or a JSON '
                            'list of [height, width] pairs, e.g. "[[336, 672], [672, 336], [672, 672]]"')
    model.add_argument("--anyres-convention", default=d["anyres_convention"], choices=("transformers", "llava"),
                       help="pinpoint order and unpadding rule (default %(default)s)")
    model.add_argument("--model-dtype", default=d["model_dtype"], choices=("float32", "bfloat16", "float16"),
                       help="dtype of the frozen tower and base LLM")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--mixed-precision", default=d["mixed_precision"], choices=("no", "bf16", "fp16"))
    runtime.add_argument("--gradient-checkpointing", action="store_true")
    runtime.add_argument("--save-every", type=int, default=d["save_every"], help="checkpoint every N steps (0: never)")
    runtime.add_argument("--keep-last", type=int, default=d["keep_last"], help="checkpoints to keep")
    runtime.add_argument("--eval-every", type=int, default=d["eval_every"], help="evaluate every N steps (0: at the end)")
    runtime.add_argument("--num-workers", type=int, default=d["num_workers"], help="data loader processes")
    runtime.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    runtime.add_argument("--no-progress", action="store_true", help="no progress bar")

    export = parser.add_argument_group("export instead of training")
    export.add_argument("--merge", metavar="TRAINED_DIR", help="merge the LoRA of a trained folder into the LLM")
    export.add_argument("--merge-output", metavar="DIR", help="where the merged model goes (with --merge)")
    export.add_argument("--llava-next-video", metavar="DIR",
                        help="also write transformers' LlavaNextVideoForConditionalGeneration layout (with --merge)")


def _pinpoints(text: str) -> list[list[int]]:
    """`--image-grid-pinpoints`: "default" or a JSON list of [height, width] pairs."""
    import json

    from vlm_vision.anyres import DEFAULT_PINPOINTS

    if text == "default":
        return [list(p) for p in DEFAULT_PINPOINTS]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from e
    if not (isinstance(value, list) and value and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and v > 0 for v in p) for p in value)):
        raise argparse.ArgumentTypeError(f"expected a list of [height, width] pairs of positive ints, got {text!r}")
    return value


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the `TrainConfig` of parsed flags.

    Raises:
        ValueError: naming the required flags that are missing.
    """
    missing = [f"--{name.replace('_', '-')}" for name in _REQUIRED if not getattr(args, name)]
    if missing:
        raise ValueError(f"missing required flags for training: {' '.join(missing)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["progress"] = not args.no_progress
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.merge:
        from vlm_vision.trained import merge_trained

        if not args.merge_output:
            print("vlm-vision train: --merge needs --merge-output DIR")
            return 2
        out = merge_trained(args.merge, args.merge_output, llava_next_video_dir=args.llava_next_video)
        print(f"merged model written to {out}")
        return 0
    from vlm_vision.train import train

    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"vlm-vision train: {e}")
        return 2
    final = train(config)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"trained model written to {final}")
    return 0

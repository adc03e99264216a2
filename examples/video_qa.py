"""Answer a question about a video: decode -> sample -> preprocess -> tower -> pool -> project -> generate.

Offline, with tiny random models (the default): every step runs as it would with real weights,
but the answer is noise.

    python examples/video_qa.py tests/data/realshort.mp4 "What happens in this video?"

With real models (any Hugging Face causal LM, a CLIP tower, trained projector weights):

    python examples/video_qa.py clip.mp4 "What happens?" --llm lmsys/vicuna-7b-v1.5 \\
        --tower openai/clip-vit-large-patch14-336 --projector mm_projector.bin --dtype bfloat16

or a transformers LLaVA-NeXT-Video folder or Hub id, converted on load:

    python examples/video_qa.py clip.mp4 "What happens?" --llava-next-video llava-hf/LLaVA-NeXT-Video-7B-hf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from projector import build_projector  # noqa: E402
from video.decode import load_video  # noqa: E402
from vlm_vision import CLIPVisionTower, VisionLanguageModel, VisionLanguageProcessor  # noqa: E402

VICUNA_PROMPT = "USER: <video>\n{question} ASSISTANT:"  # LLaVA-NeXT-Video 7B's conversation format


def tiny_random_parts(question: str):
    """A byte-level tokenizer, a 2-layer Llama and a 2-layer CLIP tower with random weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([question, VICUNA_PROMPT, "A video of a bird on a branch."] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", padding_side="left")
    processor_ids = VisionLanguageProcessor(tokenizer, None)  # adds <image>, <video>
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    tower = CLIPVisionTower.from_config(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, image_size=56, patch_size=14))
    model = VisionLanguageModel(tower, build_projector("mlp2x_gelu", 32, 64), llm,
                                image_token_id=processor_ids.image_token_id, video_token_id=processor_ids.video_token_id)
    return tokenizer, model


def build(args: argparse.Namespace):
    """(model, tokenizer) from the command line."""
    from transformers import AutoTokenizer

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.llava_next_video:
        model = VisionLanguageModel.from_llava_next_video(args.llava_next_video, dtype=dtype)
        return model, AutoTokenizer.from_pretrained(args.llava_next_video)
    if args.llm:
        if not args.tower:
            raise SystemExit("--llm needs --tower too")
        tokenizer = AutoTokenizer.from_pretrained(args.llm, padding_side="left")
        ids = VisionLanguageProcessor(tokenizer, None)  # adds <image>/<video> when missing
        model = VisionLanguageModel.from_pretrained(args.llm, args.tower, args.projector, dtype=dtype,
                                                    image_token_id=ids.image_token_id, video_token_id=ids.video_token_id)
        ids.resize_embeddings(model)
        return model, tokenizer
    tokenizer, model = tiny_random_parts(args.question)
    return model, tokenizer


def answer(model: VisionLanguageModel, tokenizer, video: str, question: str, *, num_frames: int,
           max_new_tokens: int, chat: bool) -> str:
    """Decode and sample frames, build the prompt, and generate an answer."""
    processor = VisionLanguageProcessor.for_model(tokenizer, model, num_frames=num_frames, padding_side="left")
    clip = load_video(video, num_frames=num_frames)  # uint8[T, H, W, 3], uniformly sampled
    print(f"frames: {clip.frames.shape[0]} of {clip.num_total_frames} "
          f"at {', '.join(f'{t:.2f}' for t in clip.timestamps)} s")
    if chat:  # the LLM's own chat template
        text = [{"role": "user", "content": f"<video>\n{question}"}]
    else:
        text = VICUNA_PROMPT.format(question=question)
    inputs = processor(text, videos=[clip])  # tokens, placeholders expanded, frames preprocessed
    print(f"prompt: {inputs['input_ids'].shape[1]} tokens, {model.video_tokens(clip.frames.shape[0])} of them video")
    device = next(model.llm.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}  # one video: every value is a tensor
    # tower -> pool -> project -> splice -> LLM, inside generate
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    return processor.batch_decode(output[:, inputs["input_ids"].shape[1]:])[0].strip()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", help="video file")
    parser.add_argument("question")
    parser.add_argument("--num-frames", type=int, default=8, help="frames sampled uniformly (LLaVA-NeXT-Video: 32)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--llm", help="causal LM: Hub id or folder")
    parser.add_argument("--tower", help="CLIP tower: Hub id, folder or checkpoint")
    parser.add_argument("--projector", help="projector weights (mm_projector.bin, .safetensors)")
    parser.add_argument("--llava-next-video", help="a transformers LlavaNextVideoForConditionalGeneration folder or id")
    parser.add_argument("--random-tiny", action="store_true", help="tiny random models (the default without models)")
    parser.add_argument("--prompt", choices=["auto", "chat", "vicuna"], default="auto",
                        help="chat: the tokenizer's chat template; vicuna: 'USER: <video>\\n... ASSISTANT:' "
                             "(LLaVA-NeXT-Video 7B); auto: chat for --llm with a template, else vicuna")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.random_tiny and (args.llm or args.llava_next_video):
        parser.error("--random-tiny excludes --llm and --llava-next-video")
    torch.manual_seed(args.seed)
    model, tokenizer = build(args)
    model = model.to(args.device).eval()
    chat = args.prompt == "chat" or (args.prompt == "auto" and bool(args.llm) and bool(tokenizer.chat_template))
    text = answer(model, tokenizer, args.video, args.question, num_frames=args.num_frames,
                  max_new_tokens=args.max_new_tokens, chat=chat)
    print(f"answer: {text}")
    return text


if __name__ == "__main__":
    main()

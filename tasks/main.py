"""Evaluate and fine-tune trained checkpoints: ``python tasks/main.py --task TASK ...``.

The training layer's flags (model sizes, tokenizer, TP/PP, checkpoint loading) are shared with
pretraining; this file adds the task flags and dispatches. Zero-shot GPT tasks: WIKITEXT103,
LAMBADA; BERT sentence-pair classification (fine-tune and evaluate): MNLI, QQP; BERT multiple choice: RACE;
retriever (ICT biencoder) top-k accuracy on NQ-style questions: RETRIEVER-EVAL (alias ICT-ZEROSHOT-NQ);
open-domain QA (retriever + span reader, frozen evidence): ORQA (fine-tune), ORQA-EVAL (exact match).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ZERO_SHOT_TASKS = ("WIKITEXT103", "LAMBADA")
GLUE_TASKS = ("MNLI", "QQP")
RETRIEVER_TASKS = ("RETRIEVER-EVAL", "ICT-ZEROSHOT-NQ")
ORQA_TASKS = ("ORQA", "ORQA-EVAL")
TASKS = ZERO_SHOT_TASKS + GLUE_TASKS + ("RACE",) + RETRIEVER_TASKS + ORQA_TASKS


def get_tasks_args(parser):
    from megatron.argument_groups import add_biencoder_args

    from tasks.orqa.finetune import add_orqa_args

    add_biencoder_args(parser)  # RETRIEVER-EVAL, ORQA
    add_orqa_args(parser)  # ORQA, ORQA-EVAL
    group = parser.add_argument_group(title="tasks")
    group.add_argument("--task", type=str, required=True, choices=TASKS, help="Task name.")
    group.add_argument("--epochs", type=int, default=None,
                       help="Fine-tuning epochs; 0 only evaluates.")
    group.add_argument("--pretrained-checkpoint", type=str, default=None,
                       help="Checkpoint whose weights a task starts from (no optimizer or RNG state).")
    group.add_argument("--keep-last", action="store_true", help="Evaluate the last, incomplete batch of a validation set too (dropped by default, as in Megatron).")
    group.add_argument("--train-data", nargs="+", default=None, help="Training files or directories.")
    group.add_argument("--valid-data", nargs="*", default=None, help="Validation files or directories.")
    group.add_argument("--overlapping-eval", type=int, default=32,
                       help="Stride of the WIKITEXT103 sliding window (targets counted per window).")
    group.add_argument("--strict-lambada", action="store_true",
                       help="LAMBADA: predict every token of the whole last word.")
    return parser


def _task(argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    task = next((argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag == "--task"), None)
    return task or next((flag.split("=", 1)[1] for flag in argv if flag.startswith("--task=")), None)


def _default_tokenizer(argv) -> str:
    """GPT tasks read BPE, BERT tasks WordPiece, unless --tokenizer-type says otherwise."""
    return "GPT2BPETokenizer" if _task(argv) in ZERO_SHOT_TASKS else "BertWordPieceLowerCase"


def _task_defaults(argv) -> dict:
    """Fine-tuning takes its length from --epochs; evaluation trains nothing, so the training-schedule
    flags of the user's pretraining arguments (GPT_ARGS) are accepted unchanged and have no effect."""
    schedule = "epochs" if _task(argv) in GLUE_TASKS + ("RACE", "ORQA") else "none"
    return {"tokenizer_type": _default_tokenizer(argv), "training_schedule": schedule}


def main(argv=None):
    from megatron.initialize import initialize_megatron

    from megatron.errors import input_errors_in_one_line

    # Bad flags, data files and checkpoints are the user's to fix: one line, naming the flag or file:line.
    with input_errors_in_one_line("tasks/main.py"):
        args = initialize_megatron(extra_args_provider=get_tasks_args,
                                   args_defaults=_task_defaults(argv), argv=argv)
        result = _run_task(args)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # every rank done before any leaves (the process group is released at exit)
    return result


def _run_task(args):
    from megatron.argument_groups import biencoder_arg_names

    from tasks.orqa.finetune import orqa_arg_names

    explicit = getattr(args, "_explicit_flags", set())
    if args.task not in RETRIEVER_TASKS + ORQA_TASKS:
        unused = sorted(biencoder_arg_names() & explicit)
        if unused:
            raise ValueError(f"--task {args.task} does not use the retriever flag(s) "
                             + ", ".join("--" + name.replace("_", "-") for name in unused))
    if args.task not in ORQA_TASKS:
        unused = sorted(orqa_arg_names() & explicit)
        if unused:
            raise ValueError(f"--task {args.task} does not use the ORQA flag(s) "
                             + ", ".join("--" + name.replace("_", "-") for name in unused))
    if args.virtual_pipeline_model_parallel_size is not None:
        raise ValueError("tasks/main.py does not support the interleaved pipeline schedule "
                         "(--num-layers-per-virtual-pipeline-stage)")
    if args.task in ZERO_SHOT_TASKS:
        from tasks.zeroshot_gpt.evaluate import main as zeroshot_main

        return zeroshot_main()
    if args.task in GLUE_TASKS:
        from tasks.glue.finetune import main as glue_main

        return glue_main()
    if args.task == "RACE":
        from tasks.race.finetune import main as race_main

        return race_main()
    if args.task in RETRIEVER_TASKS:
        from tasks.orqa.evaluate import main as retriever_main

        return retriever_main()
    if args.task in ORQA_TASKS:
        from tasks.orqa.finetune import main as orqa_main

        return orqa_main()
    raise ValueError(f"--task {args.task} is not implemented")


if __name__ == "__main__":
    main()

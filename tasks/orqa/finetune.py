"""Open-domain QA fine-tuning and evaluation: ``tasks/main.py --task ORQA`` / ``--task ORQA-EVAL``.

* Retrieval: the query tower (from ``--retriever-load``: an ICT, REALM or ORQA checkpoint) embeds the
  question; faiss returns the top ``--reader-beam-size`` blocks of the frozen store
  ``--block-data-path`` (``tools/create_doc_index.py``); ``log p(z|x)`` is the softmax of the inner
  products over them. Only the query tower is trained; the store is never rewritten.
* Reading: a BERT (``--reader-load``: a ``pretrain_bert.py``, REALM, ICT or ORQA checkpoint) scores
  spans of at most ``--max-span-width`` tokens in every retrieved block; the loss marginalises over
  blocks and gold spans (``megatron/core/models/span_reader.py``).
* Evaluation on ``--qa-data-dev`` / ``--qa-data-test``: exact match (SQuAD normalisation) of the best
  span and recall@k (an answer string in the top-k blocks, DPR matching) for each k of
  ``--retriever-report-topk-accuracies`` up to the beam. ORQA keeps the checkpoint of the best dev
  exact match in ``--save``.
* ``--orqa-random-retrieval``: the baseline, the same reader on random blocks with uniform p(z|x).

Every data-parallel rank reads its share of each global batch; tensor-parallel ranks read the same
questions and retrieve the same blocks (their query embeddings are equal).
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from megatron.utils import print_rank_0

TASK_NAMES = ("ORQA", "ORQA-EVAL")


def add_orqa_args(parser):
    group = parser.add_argument_group(title="open-domain QA (ORQA / ORQA-EVAL)")
    group.add_argument("--retriever-load", default=None,
                       help="Checkpoint of the query tower: ICT (pretrain_ict.py), REALM or ORQA.")
    group.add_argument("--reader-load", default=None,
                       help="Checkpoint of the reader's encoder: BERT (pretrain_bert.py), REALM, ICT or ORQA.")
    group.add_argument("--reader-beam-size", type=int, default=5, help="Retrieved blocks read per question.")
    group.add_argument("--max-span-width", type=int, default=10, help="Longest answer span, in tokens.")
    group.add_argument("--question-seq-length", type=int, default=64,
                       help="Tokens of [CLS] question [SEP]; the reader reads question-seq-length + "
                            "retriever-seq-length - 1 tokens.")
    group.add_argument("--retriever-lr-mult", type=float, default=1.0,
                       help="Learning-rate multiplier of the query tower (the reader takes --lr): a small "
                            "retriever fine-tuned at the reader's rate can lose its retrieval in an epoch.")
    group.add_argument("--orqa-random-retrieval", action="store_true",
                       help="Baseline: read --reader-beam-size random blocks with uniform p(z|x) instead of retrieving.")
    return parser


def orqa_arg_names() -> set:
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    add_orqa_args(parser)
    return {action.dest for action in parser._actions}


def check_orqa_args(args) -> None:
    if args.reader_beam_size < 1:
        raise ValueError(f"--reader-beam-size {args.reader_beam_size} must be positive")
    if args.max_span_width < 1:
        raise ValueError(f"--max-span-width {args.max_span_width} must be positive")
    if not args.retriever_lr_mult >= 0.0:
        raise ValueError(f"--retriever-lr-mult {args.retriever_lr_mult} must be >= 0")
    if args.pipeline_model_parallel_size != 1:
        raise ValueError(f"--pipeline-model-parallel-size {args.pipeline_model_parallel_size}: ORQA runs on one "
                         f"pipeline stage (use tensor or data parallelism)")
    if getattr(args, "sequence_parallel", False):
        raise ValueError("--sequence-parallel is not supported by ORQA")
    if args.tokenizer_type not in ("BertWordPieceLowerCase", "BertWordPieceCase"):
        raise ValueError(f"--task {args.task} needs a BERT WordPiece tokenizer, got --tokenizer-type {args.tokenizer_type}")
    block_length = args.retriever_seq_length if args.evidence_data_path else args.seq_length
    joint = args.question_seq_length + block_length - 1
    if joint > args.max_position_embeddings:
        flag = "--retriever-seq-length" if args.evidence_data_path else "--seq-length"
        raise ValueError(f"--question-seq-length {args.question_seq_length} + {flag} {block_length} - 1 = {joint} "
                         f"reader tokens exceed --max-position-embeddings {args.max_position_embeddings}")
    if args.task == "ORQA":
        if not args.train_data:
            raise ValueError("--task ORQA needs --train-data (NQ-open question/answer files)")
        if args.epochs is None:
            raise ValueError("--task ORQA needs --epochs")
    if not (args.qa_data_dev or args.qa_data_test) and args.task == "ORQA-EVAL":
        raise ValueError("--task ORQA-EVAL needs --qa-data-dev and/or --qa-data-test")


def model_provider(pre_process=True, post_process=True):
    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.core.models.span_reader import ORQAModel
    from megatron.global_vars import get_args, get_tokenizer

    args = get_args()
    return ORQAModel(core_transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings,
                     projection_dim=args.biencoder_projection_dim or 0,
                     shared_query_context_model=bool(args.biencoder_shared_query_context_model),
                     pad_id=get_tokenizer().pad, max_span_width=args.max_span_width)


# -- starting weights ---------------------------------------------------------------------------
_TOWERS = ("query_model.", "shared_model.")


def retriever_weights(loaded: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A checkpoint's biencoder weights under the query-only ``BiEncoderModel``'s names: ICT
    checkpoints name them so already; REALM and ORQA checkpoints put them under ``retriever.``."""
    if any(k.startswith("retriever.") for k in loaded):
        return {k[len("retriever."):]: v for k, v in loaded.items() if k.startswith("retriever.")}
    return dict(loaded)


def reader_weights(loaded: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A checkpoint's BERT encoder (and ORQA span head) under ``SpanReader``'s names: BERT checkpoints
    as they are, REALM/ORQA under ``reader.``, ICT a tower's encoder; pooler and LM/binary heads dropped."""
    for prefix in ("reader.", *_TOWERS):
        if any(k.startswith(prefix + "language_model.") for k in loaded):
            loaded = {k[len(prefix):]: v for k, v in loaded.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in loaded.items()
            if (k.startswith("language_model.") and not k.startswith("language_model.pooler."))
            or k.startswith("span_head.")}


def load_retriever(core, load_dir: str, args, pg) -> None:
    """The query tower from an ICT (``query_model.``/``shared_model.``), REALM or ORQA (``retriever.``) checkpoint."""
    from megatron.checkpointing import CheckpointError
    from megatron.retrieval.biencoder_setup import _shape_hint, compare_state, read_checkpoint_weights

    loaded, saved = read_checkpoint_weights(load_dir, "--retriever-load", args, pg)
    loaded = retriever_weights(loaded)
    expected = core.retriever.state_dict()
    problems = compare_state(expected, loaded, ignore_prefixes=("context_model.",))
    if problems:
        raise CheckpointError(f"--retriever-load {load_dir}: the checkpoint does not fit the query tower: "
                              f"{'; '.join(problems)}{_shape_hint(saved, args)}")
    with torch.no_grad():
        core.retriever.load_state_dict({k: v for k, v in loaded.items() if k in expected}, strict=True)


def load_reader(core, load_dir: str, args, pg) -> None:
    """The reader's encoder from a BERT, REALM (``reader.``), ICT (a tower's encoder) or ORQA checkpoint;
    the span head too when the checkpoint has one (ORQA), else it stays freshly initialised."""
    from megatron.checkpointing import CheckpointError
    from megatron.retrieval.biencoder_setup import _clip, compare_state, read_checkpoint_weights

    loaded, _ = read_checkpoint_weights(load_dir, "--reader-load", args, pg)
    weights = reader_weights(loaded)
    if not any(k.startswith("language_model.") for k in weights):
        raise CheckpointError(f"--reader-load {load_dir}: no BERT encoder weights (it holds {_clip(sorted(loaded))})")
    expected = core.reader.state_dict()
    tokentype = "language_model.embedding.tokentype_embeddings.weight"
    no_tokentypes = tokentype in expected and tokentype not in weights
    fresh = {k for k in expected if k.startswith("span_head.") and k not in weights}
    fresh |= {tokentype} if no_tokentypes else set()
    problems = compare_state({k: v for k, v in expected.items() if k not in fresh}, weights)
    if problems:
        raise CheckpointError(f"--reader-load {load_dir}: the checkpoint does not fit the reader: {'; '.join(problems)}")
    with torch.no_grad():
        core.reader.load_state_dict(weights, strict=False)
        if no_tokentypes:
            core.reader.state_dict()[tokentype].zero_()


def start_weights(model, args, pg) -> str:
    """Initial weights of a run that resumes nothing; returns what they came from."""
    from megatron.checkpointing import load_checkpoint, unwrap_model

    if args.pretrained_checkpoint:
        finetune, args.finetune = args.finetune, True
        load_checkpoint(model, None, None, args, load_arg="pretrained_checkpoint", strict=True)
        args.finetune = finetune
        return f"--pretrained-checkpoint {args.pretrained_checkpoint}"
    core = unwrap_model(model[0])
    sources = []
    if args.retriever_load:
        load_retriever(core, args.retriever_load, args, pg)
        sources.append(f"query tower from --retriever-load {args.retriever_load}")
    elif not args.orqa_random_retrieval:
        raise ValueError(f"--task {args.task} needs --retriever-load (the ICT/REALM query tower), --load or "
                         f"--pretrained-checkpoint (an ORQA checkpoint)")
    if args.reader_load:
        load_reader(core, args.reader_load, args, pg)
        sources.append(f"reader from --reader-load {args.reader_load}")
    else:
        sources.append("reader from random weights (no --reader-load)")
    return "; ".join(sources)


# -- one micro-batch ----------------------------------------------------------------------------
def orqa_loss(output, examples, max_span_width: int, device):
    """(loss, number of answerable questions) of ``ORQAModel``'s output for questions ``examples``."""
    from megatron.core.models.span_reader import gold_spans, marginal_span_loss

    log_p_z, log_p_span, tokens, in_block, _ = output
    b, k, length = tokens.shape
    rows = [answers for answers in examples for _ in range(k)]
    gold = gold_spans(tokens.reshape(b * k, length).cpu().numpy(), in_block.reshape(b * k, length).cpu().numpy(),
                      rows, max_span_width)
    return marginal_span_loss(log_p_z, log_p_span, torch.from_numpy(gold).view(b, k, length, -1).to(device))


def make_forward_step(examples, evidence, args, epoch_ref: List[int]):
    from megatron.initialize import get_device

    def forward_step(data_iterator, model):
        device = get_device()
        batch = next(data_iterator)
        indices = batch["index"].tolist()
        retrieve = evidence.retriever(min(args.reader_beam_size, len(evidence)), device, args.orqa_random_retrieval,
                                      indices, args.seed, epoch_ref[0])
        output = model(batch["tokens"].to(device), batch["pad_mask"].to(device), retrieve=retrieve)

        def loss_func(out):
            loss, count = orqa_loss(out, [examples.answer_ids[i] for i in indices], args.max_span_width, device)
            return loss, {"orqa loss": loss.detach(), "answerable questions": count.float()}

        return output, loss_func

    return forward_step


# -- evaluation ---------------------------------------------------------------------------------
def evaluate(model, examples, evidence, args, pg, tokenizer, report_ks: Sequence[int]) -> Dict[str, float]:
    """{"exact_match": %, "recall@k": %, "questions": n}, the same on every rank."""
    from megatron.checkpointing import unwrap_model
    from megatron.core.models.span_reader import best_spans
    from megatron.initialize import get_device
    from megatron.retrieval.indexer import shard_range
    from megatron.retrieval.qa_validation import has_answer

    from tasks.orqa.metrics import exact_match

    device = get_device()
    core = unwrap_model(model[0])
    beam = min(args.reader_beam_size, len(evidence))
    ks = sorted({min(k, beam) for k in report_ks})
    first, last = shard_range(len(examples), pg.dp_rank, pg.data_parallel_size)
    totals = torch.zeros(1 + len(ks), dtype=torch.float64)
    core.eval()
    with torch.no_grad():
        for start in range(first, last, args.micro_batch_size):
            indices = list(range(start, min(start + args.micro_batch_size, last)))
            batch = examples.batch(indices)
            retrieve = evidence.retriever(beam, device, args.orqa_random_retrieval, indices, args.seed, 0)
            log_p_z, log_p_span, tokens, _, ids = core(batch["tokens"].to(device), batch["pad_mask"].to(device),
                                                       retrieve=retrieve)
            for row, (slot, first_token, last_token) in enumerate(best_spans(log_p_z, log_p_span)):
                answers = examples.answers[indices[row]]
                span = tokens[row, slot, first_token:last_token + 1].tolist()
                totals[0] += exact_match(tokenizer.detokenize(span), answers)
                hits = [has_answer(answers, evidence.passage_text(i), args.faiss_match) for i in ids[row].tolist()]
                for j, k in enumerate(ks):
                    totals[1 + j] += any(hits[:k])
    core.train()
    if pg.data_parallel_size > 1:
        reduced = totals.to(get_device())
        dist.all_reduce(reduced, group=pg.dp)
        totals = reduced.cpu()
    n = len(examples)
    result = {"exact_match": 100.0 * float(totals[0]) / n, "questions": n}
    measured = {k: min(k, beam) for k in report_ks}
    for k in report_ks:
        result[f"recall@{k}"] = 100.0 * float(totals[1 + ks.index(measured[k])]) / n
    return result


def format_result(task: str, split: str, result: Dict[str, float], beam: int, report_ks: Sequence[int]) -> List[str]:
    lines = [f" > {task} {split}: {result['questions']} questions: exact match {result['exact_match']:.2f} %"]
    for k in report_ks:
        note = f" (measured at the beam, {beam} blocks)" if k > beam else ""
        lines.append(f" > {task} {split}: recall@{k} {result[f'recall@{k}']:.2f} %{note}")
    return lines


# -- the task -----------------------------------------------------------------------------------
def _evaluation_sets(args, tokenizer):
    from tasks.orqa.data import QAExamples

    sets = []
    for split, path, flag in (("dev", args.qa_data_dev, "--qa-data-dev"), ("test", args.qa_data_test, "--qa-data-test")):
        if path:
            sets.append((split, QAExamples([path], tokenizer, args.question_seq_length, flag)))
    return sets


def _evidence(args, tokenizer):
    from megatron.retrieval.faiss_index import require_faiss
    from megatron.retrieval.indexer import block_corpus_from_args

    from tasks.orqa.data import FrozenEvidence

    require_faiss()
    corpus = block_corpus_from_args(args, tokenizer)
    evidence = FrozenEvidence(corpus, args.block_data_path, args.faiss_index_factory, args.faiss_nprobe,
                              args.faiss_use_gpu)
    if args.reader_beam_size > len(evidence):
        print_rank_0(f" > --reader-beam-size {args.reader_beam_size}: the evidence has {len(evidence)} blocks; "
                     f"reading all of them")
    return evidence


def run(args, pg, tokenizer) -> Dict[str, Dict[str, float]]:
    """ORQA-EVAL: {split: metrics}. ORQA: fine-tune, then {split: metrics} of the best epoch's evaluation."""
    from megatron.checkpointing import load_checkpoint
    from megatron.core.transformer import ModelType
    from megatron.model_setup import get_model

    check_orqa_args(args)
    train = None
    if args.task == "ORQA":
        from tasks.orqa.data import QAExamples

        train = QAExamples(args.train_data, tokenizer, args.question_seq_length, "--train-data")
    eval_sets = _evaluation_sets(args, tokenizer)
    evidence = _evidence(args, tokenizer)
    ks = args.retriever_report_topk_accuracies
    beam = min(args.reader_beam_size, len(evidence))

    def report(model, epoch: Optional[int] = None) -> Dict[str, Dict[str, float]]:
        results = {}
        for split, examples in eval_sets:
            results[split] = evaluate(model, examples, evidence, args, pg, tokenizer, ks)
            prefix = args.task if epoch is None else f"{args.task} |epoch: {epoch}|"
            for line in format_result(prefix, split, results[split], beam, ks):
                print_rank_0(line)
        return results

    if args.task == "ORQA-EVAL":
        model = get_model(model_provider, ModelType.encoder_or_decoder, args, pg, wrap_with_ddp=False)
        if args.load:
            args.no_load_optim, args.no_load_rng = True, True
            load_checkpoint(model, None, None, args)
            print_rank_0(f"> evaluating the ORQA checkpoint --load {args.load}")
        else:
            print_rank_0(f"> evaluating {start_weights(model, args, pg)}")
        return report(model)
    return _finetune(args, pg, train, eval_sets, evidence, report)


def _finetune(args, pg, train, eval_sets, evidence, report):
    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.checkpointing import save_checkpoint
    from megatron.core.transformer import ModelType
    from megatron.global_vars import get_timers
    from megatron.model_setup import setup_model_and_optimizer
    from megatron.startup_checks import check_save_dir
    from megatron.training import TrainingContext, train_step
    from megatron.utils import print_rank_last

    from tasks.finetune_utils import _set_training_length

    check_save_dir(args.save)
    iters_per_epoch = _set_training_length(args, len(train))
    model, optimizer, scheduler = setup_model_and_optimizer(
        model_provider, ModelType.encoder_or_decoder, args, pg,
        scale_lr_cond=lambda name, _: name.startswith("retriever."), lr_mult=args.retriever_lr_mult)
    if args.iteration == 0:
        print_rank_0(f"> ORQA starts from: {start_weights(model, args, pg)}")
        if hasattr(optimizer, "reload_model_params"):
            optimizer.reload_model_params()
    epoch_ref = [0]
    forward_step = make_forward_step(train, evidence, args, epoch_ref)
    ctx = TrainingContext(args, core_transformer_config_from_args(args), pg, model, optimizer, scheduler,
                          forward_step, get_timers(), None)
    per_rank = args.global_batch_size // pg.data_parallel_size
    best, best_results, iteration = -math.inf, {}, args.iteration
    for epoch in range(iteration // iters_per_epoch, args.epochs):
        epoch_ref[0] = epoch
        order = np.random.RandomState(args.seed + epoch).permutation(len(train))
        for step in range(iteration - epoch * iters_per_epoch, iters_per_epoch):
            batch_ids = order[step * args.global_batch_size:(step + 1) * args.global_batch_size]
            mine = batch_ids[pg.dp_rank * per_rank:(pg.dp_rank + 1) * per_rank]
            micro = iter([train.batch(mine[k:k + args.micro_batch_size]) for k in range(0, per_rank, args.micro_batch_size)])
            losses, _, grad_norm, _ = train_step(ctx, micro)
            iteration += 1
            args.consumed_train_samples += args.global_batch_size
            if iteration % args.log_interval == 0:
                print_rank_last(f" iteration {iteration:8d}/{args.train_iters:8d} | epoch {epoch + 1} | orqa loss: "
                                f"{float(losses['orqa loss']):.6E} | answerable questions per micro-batch: "
                                f"{float(losses['answerable questions']):.2f} | grad norm: {float(grad_norm):.3f} |")
        results = report(model, epoch + 1)
        # Model selection on dev exact match (test when there is no dev set).
        score = next(iter(results.values()))["exact_match"] if results else -float(epoch)
        if score > best:
            best, best_results = score, results
            if args.save:
                save_checkpoint(iteration, model, optimizer, scheduler, args, pg)
                print_rank_0(f" > saved the best checkpoint so far (epoch {epoch + 1}, exact match {score:.2f} %)")
    print_rank_0(f"done: best {eval_sets[0][0] if eval_sets else 'epoch'} exact match {best:.2f} %")
    return best_results


def main():
    from megatron.checkpointing import CheckpointError
    from megatron.core import parallel_state
    from megatron.global_vars import get_args, get_tokenizer

    args = get_args()
    try:
        return run(args, parallel_state.get_process_groups(), get_tokenizer())
    except (CheckpointError, ImportError) as error:
        raise ValueError(str(error)) from None

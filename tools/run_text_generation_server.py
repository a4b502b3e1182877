#!/usr/bin/env python
"""Serve text generation from a GPT checkpoint over HTTP (standard library only).

    python tools/run_text_generation_server.py <model flags> --load checkpoints/gpt \\
        --out-seq-length 64 --port 5000
    curl -X PUT http://127.0.0.1:5000/api -H 'Content-Type: application/json' \\
        -d '{"prompts": ["The module"], "tokens_to_generate": 16, "top_k": 5}'

PUT ``/api`` with a JSON object: ``prompts`` (list of strings, required), ``tokens_to_generate``
(default and maximum ``--out-seq-length``), ``temperature``, ``top_k``, ``top_p``, ``greedy``
(defaults from the flags of the same names) and ``random_seed``. The reply is
``{"text": [...], "length": [...], "finished": [...]}`` with one entry per prompt; ``text`` is
the prompt followed by its continuation. Invalid input gets 400 with ``{"error": "..."}``.

The server binds to 127.0.0.1 unless ``--host`` says otherwise: it has no authentication.
Under torchrun with tensor and/or pipeline parallelism, rank 0 serves and broadcasts each accepted
request to the other ranks, which generate with it in lockstep (the last pipeline stage samples,
and every stage receives the tokens). Requests are handled one at a time.
"""
import json
import os
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MAX_BODY_BYTES = 1 << 20


def add_server_args(parser):
    from megatron.text_generation.cli import add_sampling_args

    add_sampling_args(parser)
    group = parser.add_argument_group(title="server")
    group.add_argument("--host", type=str, default="127.0.0.1", help="Address to bind (default loopback only).")
    group.add_argument("--port", type=int, default=5000, help="Port to bind; 0 picks a free one.")
    group.add_argument("--max-prompts", type=int, default=16, help="Most prompts in one request.")
    group.add_argument("--max-requests", type=int, default=None,
                       help="Stop after this many requests (default: serve until interrupted).")
    return parser


class Generator:
    """Runs accepted requests; on rank 0 also the broadcast that keeps the other ranks in step."""

    def __init__(self, args, model, tokenizer):
        from megatron.text_generation.cli import sampling_generator, sampling_params_from_args

        self.args, self.model, self.tokenizer = args, model, tokenizer
        self.defaults = sampling_params_from_args(args)
        self.generator = sampling_generator(args.seed)

    def broadcast(self, message):
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_world_size() > 1:
            box = [message]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return message

    def run(self, request):
        from megatron.text_generation import generate
        from megatron.text_generation.cli import sampling_generator

        generator = self.generator if request.random_seed is None else sampling_generator(request.random_seed)
        return generate(self.model, self.tokenizer, request.prompts, request.tokens_to_generate, request.params,
                        self.args.max_position_embeddings, batch_size=len(request.prompts),
                        use_cache=not self.args.recompute, generator=generator)

    def worker_loop(self):
        """Ranks other than 0: generate whatever rank 0 broadcasts, until it broadcasts None."""
        while True:
            request = self.broadcast(None)
            if request is None:
                return
            self.run(request)


def make_handler(generator: Generator, limits):
    from megatron.text_generation.api import RequestError, parse_request

    class Handler(BaseHTTPRequestHandler):
        server_version = "MegatronTextGeneration/1.0"

        def log_message(self, format, *args):  # one line per request on stdout, not stderr
            print(f"{self.address_string()} {format % args}", flush=True)

        def _reply(self, status: HTTPStatus, payload: dict, headers=()):
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _not_allowed(self):
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{self.command} is not supported; use PUT /api"},
                        [("Allow", "PUT")])

        do_GET = do_POST = do_DELETE = do_PATCH = _not_allowed

        def _read_body(self):
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise RequestError("a Content-Length header with the body size is required")
            if int(length) > MAX_BODY_BYTES:
                raise RequestError(f"the body has {length} bytes; at most {MAX_BODY_BYTES} are allowed")
            raw = self.rfile.read(int(length))
            try:
                return json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise RequestError(f"the body is not valid JSON: {error}") from None

        def do_PUT(self):
            if self.path.split("?", 1)[0] != "/api":
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}; use PUT /api"})
                return
            try:
                request = parse_request(self._read_body(), limits, generator.defaults, generator.args.out_seq_length)
                longest = generator.args.max_position_embeddings - 1
                for index, prompt in enumerate(request.prompts):
                    count = len(generator.tokenizer.tokenize(prompt))
                    if count > longest:
                        raise RequestError(f"prompts[{index}] has {count} tokens; at most {longest} fit the model")
            except RequestError as error:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                return
            generator.broadcast(request)
            results = generator.run(request)
            self._reply(HTTPStatus.OK, {"text": [r["text"] for r in results],
                                        "length": [r["length"] for r in results],
                                        "finished": [r["finished"] for r in results]})

    return Handler


def serve(args, generator: Generator) -> None:
    from megatron.text_generation.api import RequestLimits

    limits = RequestLimits(max_prompts=args.max_prompts, max_tokens_to_generate=args.out_seq_length)
    server = None
    handled = 0
    try:
        # Inside the try: a failed bind must still release the other ranks waiting for requests.
        server = HTTPServer((args.host, args.port), make_handler(generator, limits))
        host, port = server.server_address[:2]
        print(f"serving text generation on http://{host}:{port}/api", flush=True)
        while args.max_requests is None or handled < args.max_requests:
            server.handle_request()
            handled += 1
    except KeyboardInterrupt:
        print("interrupted: stopping the server", flush=True)
    finally:
        if server is not None:
            server.server_close()
        generator.broadcast(None)


def main(argv=None) -> int:
    import torch.distributed as dist

    from megatron.global_vars import get_tokenizer
    from megatron.initialize import initialize_megatron
    from megatron.text_generation.cli import (
        GENERATION_DEFAULTS,
        check_generation_layout,
        load_gpt_for_generation,
        sampling_params_from_args,
    )

    args = initialize_megatron(add_server_args, GENERATION_DEFAULTS, argv=argv)
    tool = os.path.basename(sys.argv[0]) or "run_text_generation_server.py"
    try:
        sampling_params_from_args(args)
        check_generation_layout(args)
        if args.max_prompts < 1:
            raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}")
        if args.max_requests is not None and args.max_requests < 1:
            raise ValueError(f"--max-requests must be >= 1, got {args.max_requests}")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must lie in [0, 65535], got {args.port}")
        model = load_gpt_for_generation(args)
    except ValueError as error:
        print(f"{tool}: error: {error}", file=sys.stderr, flush=True)
        return 2
    generator = Generator(args, model, get_tokenizer())
    if not dist.is_initialized() or dist.get_rank() == 0:
        serve(args, generator)
    else:
        generator.worker_loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

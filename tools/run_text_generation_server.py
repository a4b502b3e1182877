#!/usr/bin/env python
"""Serve text generation from a GPT checkpoint over HTTP (Flask, as Megatron-LM's server).

    pip install -e ".[server]"
    python tools/run_text_generation_server.py <model flags> --load checkpoints/gpt \\
        --out-seq-length 64 --port 5000
    curl -X PUT http://127.0.0.1:5000/api -H 'Content-Type: application/json' \\
        -d '{"prompts": ["The module"], "tokens_to_generate": 16, "top_k": 5}'

PUT ``/api`` with a JSON object: ``prompts`` (list of strings, required), ``tokens_to_generate``
(default and maximum ``--out-seq-length``), ``temperature``, ``top_k``, ``top_p``, ``greedy``
(defaults from the flags of the same names) and ``random_seed``. The reply is
``{"text": [...], "length": [...], "finished": [...]}`` with one entry per prompt; ``text`` is
the prompt followed by its continuation. Invalid input gets 400 with ``{"error": "..."}``; that
includes a prompt whose tokens plus ``tokens_to_generate`` do not fit ``--max-position-embeddings``
(the server never answers with a continuation cut short by the model's length).

Clients are served concurrently, one thread each, and a client that does not send its request
within ``--request-timeout`` seconds is disconnected (408 when its headers had arrived), so a stalled
client never holds up the others. Generation itself runs one request at a time behind a lock: the
model, its KV cache and the collectives of a multi-rank run are not shared between requests.

The server binds to 127.0.0.1 unless ``--host`` says otherwise: it has no authentication.
Under torchrun with tensor and/or pipeline parallelism, rank 0 serves and broadcasts each accepted
request to the other ranks, which generate with it in lockstep (the last pipeline stage samples,
and every stage receives the tokens).
"""
import json
import os
import socket
import sys
import threading

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
    group.add_argument("--request-timeout", type=float, default=30.0,
                       help="Seconds a client may take to send its request (and between reads of its body) "
                            "before it is disconnected; other clients are served meanwhile.")
    group.add_argument("--max-requests", type=int, default=None,
                       help="Stop after answering this many requests (default: serve until interrupted).")
    return parser


class Generator:
    """Runs accepted requests one at a time; on rank 0 also the broadcast that keeps the other ranks in step."""

    def __init__(self, args, model, tokenizer):
        from megatron.text_generation.cli import sampling_generator, sampling_params_from_args

        self.args, self.model, self.tokenizer = args, model, tokenizer
        self.defaults = sampling_params_from_args(args)
        self.generator = sampling_generator(args.seed)
        # Held for a whole request: the broadcast to the other ranks and the generation that follows
        # must not interleave with another request's (the collectives would pair up wrongly).
        self.lock = threading.Lock()
        self.stopped = False

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

    def serve_request(self, request):
        """Generate for an accepted request on every rank; None once the server is stopping."""
        with self.lock:
            if self.stopped:
                return None
            self.broadcast(request)
            return self.run(request)

    def stop(self):
        """Release the other ranks (after any generation in progress) and refuse further requests."""
        with self.lock:
            if not self.stopped:
                self.stopped = True
                self.broadcast(None)

    def worker_loop(self):
        """Ranks other than 0: generate whatever rank 0 broadcasts, until it broadcasts None."""
        while True:
            request = self.broadcast(None)
            if request is None:
                return
            self.run(request)


def check_fits_model(request, tokenizer, max_positions: int, tokens_defaulted: bool) -> None:
    """Refuse a prompt whose continuation would be cut short by the model's number of positions."""
    from megatron.text_generation.api import RequestError

    longest = max_positions - 1
    asked = request.tokens_to_generate
    source = "tokens_to_generate (default --out-seq-length)" if tokens_defaulted else "tokens_to_generate"
    for index, prompt in enumerate(request.prompts):
        count = len(tokenizer.tokenize(prompt))
        if count > longest:
            raise RequestError(f"prompts[{index}] has {count} tokens; at most {longest} fit the model")
        if count + asked > max_positions:
            raise RequestError(
                f"prompts[{index}] has {count} tokens and {source} is {asked}: {count + asked} positions exceed "
                f"the model's {max_positions} (--max-position-embeddings); ask for at most "
                f"{max_positions - count} tokens or shorten the prompt")


def create_app(generator: Generator, limits, on_answered=None):
    """The Flask application: PUT /api, JSON in and out, errors as ``{"error": ...}``."""
    import flask
    from werkzeug.exceptions import ClientDisconnected, HTTPException

    from megatron.text_generation.api import RequestError, parse_request

    app = flask.Flask("megatron_text_generation")

    def reply(status: int, payload: dict, headers=None):
        body = json.dumps(payload, ensure_ascii=False)
        return flask.Response(body, status=status, mimetype="application/json", headers=headers)

    def read_body():
        length = flask.request.content_length
        if length is None:
            raise RequestError("a Content-Length header with the body size is required")
        if length > MAX_BODY_BYTES:
            raise RequestError(f"the body has {length} bytes; at most {MAX_BODY_BYTES} are allowed")
        try:
            raw = flask.request.get_data(cache=False)
        except ClientDisconnected as error:
            if isinstance(error.__context__, TimeoutError):
                raise
            raise RequestError(f"the client closed the connection before sending its {length}-byte body") from None
        if len(raw) < length:
            raise RequestError(f"the body ended after {len(raw)} of its {length} bytes")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(f"the body is not valid JSON: {error}") from None

    @app.route("/api", methods=["PUT"])
    def api():
        try:
            body = read_body()
        except RequestError as error:
            return reply(400, {"error": str(error)})
        except ClientDisconnected:  # a read of the body timed out
            return reply(408, {"error": f"the request body did not arrive within --request-timeout "
                                        f"{generator.args.request_timeout:g} s"})
        try:
            request = parse_request(body, limits, generator.defaults, generator.args.out_seq_length)
            check_fits_model(request, generator.tokenizer, generator.args.max_position_embeddings,
                             tokens_defaulted=isinstance(body, dict) and "tokens_to_generate" not in body)
        except RequestError as error:
            return reply(400, {"error": str(error)})
        results = generator.serve_request(request)
        if results is None:
            return reply(503, {"error": "the server is shutting down"})
        return reply(200, {"text": [r["text"] for r in results], "length": [r["length"] for r in results],
                           "finished": [r["finished"] for r in results]})

    @app.errorhandler(HTTPException)
    def http_error(error):
        if error.code == 405:
            return reply(405, {"error": f"{flask.request.method} is not supported; use PUT /api"}, {"Allow": "PUT"})
        if error.code == 404:
            return reply(404, {"error": f"no endpoint {flask.request.path}; use PUT /api"})
        return reply(error.code or 500, {"error": error.description})

    @app.after_request
    def count(response):
        if on_answered is not None:
            response.call_on_close(on_answered)  # after the last byte of the reply has been written
        return response

    return app


class _AfterTimeoutEmpty:
    """The client's input stream, reading as empty once a read has timed out.

    After a timeout the socket file refuses every further read with an OSError; werkzeug drains
    the unread body after each reply, which would then log a traceback and skip the reply's close
    callbacks (the request count of --max-requests).
    """

    def __init__(self, stream):
        self._stream = stream
        self._timed_out = False

    def _guard(self, method, empty, *args):
        if self._timed_out:
            return empty
        try:
            return method(*args)
        except TimeoutError:
            self._timed_out = True
            raise
        except OSError:
            if self._stream.closed:
                raise
            self._timed_out = True
            return empty

    def read(self, *args):
        return self._guard(self._stream.read, b"", *args)

    def readline(self, *args):
        return self._guard(self._stream.readline, b"", *args)

    def readinto(self, buffer):
        return self._guard(self._stream.readinto, 0, buffer)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _request_handler(timeout: float):
    from werkzeug.serving import WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        # socketserver applies this to the client's socket: a read that waits longer raises
        # TimeoutError, which ends this client's thread and nothing else.
        def setup(self):
            self.timeout = timeout
            super().setup()
            self.rfile = _AfterTimeoutEmpty(self.rfile)

        # One plain line per request on stdout (werkzeug's own lines are coloured, on stderr).
        def log_request(self, code="-", size="-"):
            print(f'{self.address_string()} "{self.requestline}" {getattr(code, "value", code)}', flush=True)

        def log(self, type, message, *args):
            print(f"{self.address_string()} {type}: {message % args}", flush=True)

    return Handler


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; a port in use or an address that cannot be bound is one line naming it."""
    from werkzeug.serving import select_address_family

    family = select_address_family(host, port)
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except socket.gaierror as error:
        raise ValueError(f"--host {host}: cannot resolve the address ({error.strerror})") from None
    except OSError as error:
        if error.errno == 98 or "in use" in str(error).lower():
            raise ValueError(f"--port {port}: {host}:{port} is already in use by another program; "
                             f"stop it or choose another --port (0 picks a free one)") from None
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None


def serve(args, generator: Generator, listening: socket.socket) -> None:
    """Answer requests on ``listening`` until interrupted or --max-requests are answered."""
    from werkzeug.serving import make_server

    from megatron.text_generation.api import RequestLimits

    limits = RequestLimits(max_prompts=args.max_prompts, max_tokens_to_generate=args.out_seq_length)
    server = None
    answered = [0]
    count_lock = threading.Lock()

    def on_answered():
        with count_lock:
            answered[0] += 1
            done = args.max_requests is not None and answered[0] == args.max_requests
        if done:
            # shutdown() waits for serve_forever() to return, so it cannot run on a thread it serves.
            threading.Thread(target=server.shutdown, daemon=True).start()

    try:
        with listening:  # werkzeug serves a duplicate of the socket
            server = make_server(args.host, args.port, create_app(generator, limits, on_answered), threaded=True,
                                 request_handler=_request_handler(args.request_timeout), fd=listening.fileno())
        host, port = server.server_address[:2]
        print(f"serving text generation on http://{host}:{port}/api", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("interrupted: stopping the server", flush=True)
    finally:
        if server is not None:
            server.server_close()
        generator.stop()  # releases the other ranks, also when serving failed


def main(argv=None) -> int:
    import torch.distributed as dist

    from megatron.global_vars import get_tokenizer
    from megatron.initialize import initialize_megatron
    from megatron.text_generation.cli import (
        GENERATION_DEFAULTS,
        check_generation_layout,
        load_gpt_for_generation,
        out_seq_length_notice,
        sampling_params_from_args,
    )

    tool = os.path.basename(sys.argv[0]) or "run_text_generation_server.py"
    try:
        import flask  # noqa: F401
    except ImportError:
        print(f"{tool}: error: the server needs Flask: pip install -e \".[server]\"", file=sys.stderr, flush=True)
        return 2
    args = initialize_megatron(add_server_args, GENERATION_DEFAULTS, argv=argv)
    serving_rank = not dist.is_initialized() or dist.get_rank() == 0
    try:
        sampling_params_from_args(args)
        check_generation_layout(args)
        if args.max_prompts < 1:
            raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}")
        if args.max_requests is not None and args.max_requests < 1:
            raise ValueError(f"--max-requests must be >= 1, got {args.max_requests}")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must lie in [0, 65535], got {args.port}")
        if not args.request_timeout > 0:
            raise ValueError(f"--request-timeout must be > 0 seconds, got {args.request_timeout}")
    except ValueError as error:
        print(f"{tool}: error: {error}", file=sys.stderr, flush=True)
        return 2
    listening = bind_error = None
    if serving_rank:
        # Before loading the model: a port in use is known at once, not after minutes of loading.
        try:
            listening = bind(args.host, args.port)
        except ValueError as error:
            print(f"{tool}: error: {error}", file=sys.stderr, flush=True)
            bind_error = error
            if not dist.is_initialized() or dist.get_world_size() == 1:
                return 1
    try:
        model = load_gpt_for_generation(args)
    except ValueError as error:
        print(f"{tool}: error: {error}", file=sys.stderr, flush=True)
        if listening is not None:
            listening.close()
        return 2
    generator = Generator(args, model, get_tokenizer())
    if not serving_rank:
        generator.worker_loop()
        return 0
    if bind_error is not None:
        generator.stop()  # the other ranks loaded the model and wait for requests: release them
        return 1
    notice = out_seq_length_notice(args, longest_prompt=None)
    if notice:
        print(notice, flush=True)
    serve(args, generator, listening)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tools/run_text_generation_server.py end to end: a server on a free loopback port answers a
bounded number of requests (generation, validation errors, wrong method or path) and exits; a
stalled client does not hold up the others; start-up problems are one line."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from test_generate_lib import model_args
from test_training_lib import REPO

pytest.importorskip("flask", reason="the server needs the 'server' extra: pip install -e '.[server]'")


class Server:
    """The server as a subprocess that stops by itself after ``max_requests`` requests."""

    def __init__(self, max_requests, *extra, nproc=1):
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        command = [*launcher, os.path.join(REPO, "tools/run_text_generation_server.py"), *model_args(nproc),
                   "--port", "0", "--max-requests", str(max_requests), "--out-seq-length", "8", *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.output = []
        self.url = None
        ready = threading.Event()

        def pump():  # keep reading so a full pipe never blocks the server
            for line in self.process.stdout:
                self.output.append(line)
                if "serving text generation on " in line:
                    self.url = line.split("serving text generation on ", 1)[1].strip()
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=pump, daemon=True)
        self.reader.start()
        if not ready.wait(120) or self.url is None:
            self.process.kill()
            raise AssertionError("the server did not start:\n" + "".join(self.output)[-4000:])

    def request(self, method="PUT", body=None, path="/api", raw=None, timeout=60):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        url = self.url.rsplit("/api", 1)[0] + path
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait(self):
        code = self.process.wait(timeout=60)
        self.reader.join(10)
        return code


def test_server_generates_and_validates(tmp_path):
    server = Server(9)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        status, reply = server.request(body={"prompts": ["The module", "import os"], "tokens_to_generate": 6,
                                             "greedy": True})
        assert status == 200, reply
        assert set(reply) == {"text", "length", "finished"}
        assert reply["text"][0].startswith("The module") and reply["text"][1].startswith("import os")
        assert all(1 <= n <= 6 for n in reply["length"])
        assert server.request(body={"prompts": ["The module", "import os"], "tokens_to_generate": 6,
                                    "greedy": True}) == (200, reply)
        sampled = {"prompts": ["The"], "tokens_to_generate": 8, "top_k": 5, "random_seed": 11}
        first = server.request(body=sampled)
        assert first[0] == 200 and server.request(body=sampled) == first  # same seed, same text

        status, reply = server.request(body={"prompts": [], "tokens_to_generate": 4})
        assert status == 400 and reply["error"] == "prompts must be a non-empty list of strings"
        status, reply = server.request(body={"prompts": ["x"], "tokens_to_generate": 9})
        assert status == 400 and "tokens_to_generate must lie in [0, 8], got 9" in reply["error"]
        status, reply = server.request(raw=b"{not json")
        assert status == 400 and reply["error"].startswith("the body is not valid JSON")
        assert server.request(method="GET")[0] == 405
        assert server.request(body={"prompts": ["x"]}, path="/other")[0] == 404
        assert server.wait() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_server_rejects_prompts_longer_than_the_model(tmp_path):
    server = Server(1)
    try:
        status, reply = server.request(body={"prompts": ["word " * 40]})
        assert status == 400 and "prompts[0] has" in reply["error"] and "at most 31 fit the model" in reply["error"]
        assert server.wait() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_requests_that_do_not_fit_the_model_or_have_non_finite_numbers_get_400():
    server = Server(7)
    try:
        fits = "The" + " word" * 23  # 24 tokens: with 8 generated, exactly the model's 32 positions
        status, reply = server.request(body={"prompts": [fits], "tokens_to_generate": 8, "greedy": True})
        assert status == 200, reply
        assert reply["length"] == [8] or reply["finished"] == [True], reply
        # One token more would leave room for 7: refused, never answered with a shortened continuation.
        status, reply = server.request(body={"prompts": [fits + " word"], "tokens_to_generate": 8})
        assert status == 400, reply
        assert reply["error"] == ("prompts[0] has 25 tokens and tokens_to_generate is 8: 33 positions exceed the "
                                  "model's 32 (--max-position-embeddings); ask for at most 7 tokens or shorten "
                                  "the prompt")
        status, reply = server.request(body={"prompts": [fits + " word"]})
        assert status == 400 and "tokens_to_generate (default --out-seq-length) is 8" in reply["error"]
        for raw, expected in ((b'{"prompts": ["x"], "temperature": Infinity}', "temperature must be a finite number"),
                              (b'{"prompts": ["x"], "temperature": NaN}', "temperature must be a finite number"),
                              (b'{"prompts": ["x"], "top_p": -Infinity}', "top_p must be a finite number"),
                              (b'{"prompts": ["x"], "temperature": -0.5}', "temperature must be a number > 0")):
            status, reply = server.request(raw=raw)
            assert status == 400 and reply["error"].startswith(expected), (raw, reply)
        assert server.wait() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_stalled_client_does_not_delay_another_by_more_than_one_generation():
    server = Server(3, "--request-timeout", "3")
    body = {"prompts": ["The module", "import os"], "tokens_to_generate": 8, "greedy": True}
    stalled = socket.socket()
    try:
        start = time.monotonic()
        assert server.request(body=body)[0] == 200
        one_generation = time.monotonic() - start

        host, port = server.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        stalled.connect((host, int(port)))
        stalled.sendall(b"PUT /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"prompts\": [\"The")  # then nothing more
        time.sleep(0.3)  # the stalled request is in the server before the next one arrives

        start = time.monotonic()
        status, reply = server.request(body=body, timeout=20)
        waited = time.monotonic() - start
        assert status == 200, reply
        assert waited < 2 * one_generation + 1.5, (waited, one_generation)

        # The stalled client is answered 408 once --request-timeout has passed, and the server goes on.
        stalled.settimeout(30)
        answer = b""
        while b"}" not in answer:
            chunk = stalled.recv(4096)
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"did not arrive within --request-timeout 3 s" in answer
        assert server.wait() == 0
        assert not any("Traceback" in line for line in server.output), "".join(server.output)[-3000:]
    finally:
        stalled.close()
        if server.process.poll() is None:
            server.process.kill()


def _start_up_failure(*flags):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools/run_text_generation_server.py"), *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_port_in_use_is_one_line_naming_the_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _start_up_failure(*model_args(), "--port", str(port))
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"run_text_generation_server.py: error: --port {port}: 127.0.0.1:{port} is already in use "
                      f"by another program; stop it or choose another --port (0 picks a free one)"], result.stderr


def test_missing_load_names_load_not_no_load_optim():
    flags = model_args()
    at = flags.index("--load")
    result = _start_up_failure(*flags[:at], *flags[at + 2:])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--no-load-optim" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == ["run_text_generation_server.py: error: --load is required: the checkpoint directory to "
                      "generate from"], result.stderr


@pytest.mark.slow
def test_tensor_parallel_server_matches_single_process():
    replies = []
    for nproc in (1, 2):
        server = Server(1, nproc=nproc)
        try:
            replies.append(server.request(body={"prompts": ["The module", "x"], "tokens_to_generate": 6,
                                                "greedy": True}))
            assert server.wait() == 0
        finally:
            if server.process.poll() is None:
                server.process.kill()
    assert replies[0][0] == 200 and replies[0] == replies[1]

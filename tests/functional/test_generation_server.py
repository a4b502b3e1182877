"""tools/run_text_generation_server.py end to end: a server on a free loopback port answers a
bounded number of requests (generation, validation errors, wrong method or path) and exits."""
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from test_generate_lib import model_args
from test_training_lib import REPO


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

    def request(self, method="PUT", body=None, path="/api", raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        url = self.url.rsplit("/api", 1)[0] + path
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
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

"""Fakes for fault injection and speed. Real backends are tested elsewhere; these never stand alone."""

import functools
import http.server
import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from mig_assets.core.llm.backends import Sampling, truncate_by_chars
from mig_assets.resources import Tagger


class ScriptedBackend:
    """Answers from a script: ``answers[text]`` is a list of answers for successive attempts
    (the last one repeats); unknown texts get a valid answer derived from the text."""

    model_id = "fake-model"

    def __init__(self, answers: dict[str, list[str | None]] | None = None, delay_s: float = 0.0):
        self.answers = answers or {}
        self.delay_s = delay_s
        self.calls: list[tuple[int, Sampling]] = []

    def complete(self, conversations, schema, sampling):
        self.calls.append((len(conversations), sampling))
        time.sleep(self.delay_s)
        out = []
        for messages in conversations:
            query = messages[-1]["content"].rsplit("Query: ", 1)[-1]
            script = self.answers.get(query)
            if script is None:
                words = [w.lower() for w in query.split() if w.isalpha()][:2] or ["topic"]
                out.append(json.dumps({"tags": [f"{w} skill" for w in words]}))
            else:
                attempt = sum(1 for _, s in self.calls if s.temperature > 0) if sampling.temperature > 0 else 0
                out.append(script[min(attempt, len(script) - 1)])
        return out

    def truncate(self, text, max_tokens):
        return truncate_by_chars(text, max_tokens)

    def close(self):
        pass


class KillOnceBackend(ScriptedBackend):
    """A ScriptedBackend whose process dies (``os._exit``, no cleanup: what an OOM kill or a lost
    node looks like to Ray) the first time it is asked to tag ``kill_query``. A marker file makes
    the death happen once, so the retried batch succeeds."""

    def __init__(self, answers=None, delay_s=0.0, kill_query="", marker=""):
        super().__init__(answers, delay_s)
        self.kill_query, self.marker = kill_query, Path(marker)

    def complete(self, conversations, schema, sampling):
        queries = [messages[-1]["content"].rsplit("Query: ", 1)[-1] for messages in conversations]
        if self.kill_query in queries and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(17)
        return super().complete(conversations, schema, sampling)


class FakeTagger(Tagger):
    """A Tagger whose LLM is a ScriptedBackend (backend name kept as 'vllm' for the code path)."""

    backend: str = "vllm"
    model: str = "fake-model"
    delay_s: float = 0.0
    script_json: str = "{}"  # ScriptedBackend answers as JSON (resource config must be plain data)

    kill_query: str = ""  # on Ray: the actor tagging this query dies once (KillOnceBackend)
    kill_marker: str = ""

    def llm(self):
        if self._backend is None:
            self._backend = ScriptedBackend(json.loads(self.script_json), delay_s=self.delay_s)
        return self._backend

    def backend_factory(self, **overrides):
        if self.kill_query:
            return functools.partial(KillOnceBackend, json.loads(self.script_json), self.delay_s, kill_query=self.kill_query, marker=self.kill_marker)
        return functools.partial(ScriptedBackend, json.loads(self.script_json), delay_s=self.delay_s)


def tag_shard_slowly(mig_home: str, shard: str, delay_s: float, batch_size: int) -> None:
    """Materialize atomic_tags[shard] with a slow fake backend (the subprocess of the kill test)."""
    import dagster as dg

    from mig_assets.defs.tagging.assets import build_atomic_tags
    from mig_assets.resources import Execution, Warehouse

    tagger = FakeTagger(delay_s=delay_s, batch_size=batch_size)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("pool_shards", [shard])
        dg.materialize(
            [build_atomic_tags(tagger.version())],
            partition_key=shard,
            instance=instance,
            resources={"warehouse": Warehouse(mig_home=mig_home), "tagger": tagger, "execution": Execution()},
        )


if __name__ == "__main__":
    import sys

    tag_shard_slowly(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))


class JsonApiHandler(http.server.BaseHTTPRequestHandler):
    """A JSON-over-POST server on 127.0.0.1 (an OpenAI-compatible stand-in): subclasses answer
    ``respond(path, body)`` with a JSON-able value, or None for a 404."""

    def respond(self, path: str, body: dict):
        raise NotImplementedError

    def do_POST(self):  # noqa: N802
        answer = self.respond(self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        if answer is None:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def json_api_server(handler: type[JsonApiHandler]):
    """Serve ``handler`` on a free port in a thread; yields the base URL (``http://127.0.0.1:PORT/v1``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()

"""The worker's own service models: botocore's, trimmed to the operations the agent calls.

botocore's EC2 model holds 830 operations and 4,421 shapes (4.3 MB of JSON). Building an EC2
client from it costs about 130 ms of CPU (measured: 75 ms to read the model, the rest to build
the client class), and every worker pays it once, at its very end, for one call: terminating its
own instance. Trimmed to that operation and the shapes it reaches, the model builds its client
in a few ms (6 ms measured). An instance then terminates that much sooner; on the local fleet,
where every worker shares the machine, it is CPU that the workers still running get back.

botocore looks a service model up along its data path (`AWS_DATA_PATH`), then in its own data:
`use_trimmed_models` puts `MODELS` first. Only service-2.json is trimmed; endpoint rules,
paginators and waiters still come from botocore. The files are generated from the installed
botocore by `python -m worker_ami.service_models`, and a test holds each to be whole (every
shape it refers to is in it) and a part of what the installed botocore has: an upgrade that adds
members leaves it usable (the worker sends none of them, and a reply's are skipped), one that
changes or drops what it holds fails the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODELS = Path(__file__).parent / "models"
# What the agent calls, by service. A call outside this list fails at once on the worker
# (the client has no such method): add it here and regenerate.
OPERATIONS: dict[str, tuple[str, ...]] = {"ec2": ("TerminateInstances",)}


def trimmed(service: str, operations: tuple[str, ...]) -> tuple[str, dict]:
    """`service`'s latest model from botocore's own data, with only `operations` and the shapes
    they reach (documentation dropped), and its API version."""
    from botocore.loaders import Loader

    # botocore's own data alone: never a model found earlier on a data path (this one's).
    loader = Loader([Loader.BUILTIN_DATA_PATH], include_default_search_paths=False)
    version = loader.determine_latest_version(service, "service-2")
    full = loader.load_service_model(service, "service-2", version)
    kept: dict[str, Any] = {}
    pending = [shape for op in operations for shape in shape_names(full["operations"][op])]
    while pending:
        name = pending.pop()
        if name not in kept:
            kept[name] = _undocumented(full["shapes"][name])
            pending.extend(shape_names(kept[name]))
    model = {
        "version": full.get("version", "2.0"),
        "metadata": full["metadata"],
        "operations": {op: _undocumented(full["operations"][op]) for op in operations},
        "shapes": dict(sorted(kept.items())),
    }
    return version, model


def model_path(service: str, version: str) -> Path:
    return MODELS / service / version / "service-2.json"


def use_trimmed_models() -> None:
    """Have this process's clients read `MODELS` first: call before its first client."""
    from chalicelib.aws import prefer_service_models

    prefer_service_models(MODELS)


def shape_names(node: Any) -> Iterator[str]:
    """The shapes a model node refers to (`{"shape": name}` at any depth)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "shape" and isinstance(value, str):
                yield value
            else:
                yield from shape_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from shape_names(item)


def _undocumented(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _undocumented(v) for k, v in node.items() if k != "documentation"}
    if isinstance(node, list):
        return [_undocumented(v) for v in node]
    return node


def write() -> list[Path]:
    written = []
    for service, operations in OPERATIONS.items():
        version, model = trimmed(service, operations)
        path = model_path(service, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(model, indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path)

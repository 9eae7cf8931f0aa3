"""Checks a running labeler the way a Python atproto consumer does, with the official SDK
(MarshalX `atproto`): queryLabels pages parsed into its lexicon models, subscribeLabels
through its firehose client (frames decoded by its DAG-CBOR codec and parsed into the
`#labels` model), and every label's signature verified
with `atproto_crypto.verify_signature` (which refuses high-S signatures) over the label
re-encoded without `sig` by `libipld`.

    python3 -m venv bench/peer-py && bench/peer-py/bin/pip install atproto
    bench/peer-py/bin/python bench/interop/verify-labels.py http://127.0.0.1:8081

Exits 1 if any label fails to verify or parse; bounded: the stream is read until it has
been quiet for 3 s, at most 120 s.
"""

import base64
import sys
import threading
import time

import httpx
import libipld
from atproto import models
from atproto_client.models.utils import get_or_create
from atproto_crypto.verify import verify_signature
from atproto_firehose import FirehoseSubscribeLabelsClient, parse_subscribe_labels_message

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8081"
failures = []


def check(unsigned: dict, sig: bytes, where: str) -> None:
    if unsigned.get("neg") is False:
        failures.append(f"{where}: neg:false must be omitted")
    if not unsigned["src"].startswith("did:key:"):
        failures.append(f"{where}: src {unsigned['src']} is not a did:key")
        return
    if not verify_signature(unsigned["src"], libipld.encode_dag_cbor(unsigned), sig):
        failures.append(f"{where}: signature does not verify: {unsigned}")


# queryLabels, every page, parsed into the SDK's lexicon models. SDK 0.0.73 types
# `Label.sig` as `str | bytes` and does not decode the data model's JSON form of bytes,
# `{"$bytes": "<base64>"}` (https://atproto.com/specs/data-model), which every conformant labeler (Ozone
# included) sends; its typed `query_labels` call therefore raises a ValidationError on any
# signed label. We decode `$bytes` here, as a Python consumer must, then validate.
cursor = None
from_query = 0
while True:
    raw = httpx.get(
        f"{base}/xrpc/com.atproto.label.queryLabels",
        params={"uriPatterns": "*", "limit": 250, **({"cursor": cursor} if cursor else {})},
    )
    raw.raise_for_status()
    body = raw.json()
    decoded = []
    for label in body["labels"]:
        sig_b64 = label["sig"]["$bytes"]
        if sig_b64.endswith("="):
            failures.append(f"queryLabels {label['uri']}: sig must be unpadded base64")
        sig = base64.b64decode(sig_b64 + "=" * (-len(sig_b64) % 4), validate=True)
        unsigned = {k: v for k, v in label.items() if k != "sig"}
        check(unsigned, sig, f"queryLabels {label['uri']}")
        decoded.append({**unsigned, "sig": sig})
        from_query += 1
    typed = get_or_create({**body, "labels": decoded}, models.ComAtprotoLabelQueryLabels.Response)
    if len(typed.labels) != len(decoded):
        failures.append("the SDK model lost labels")
    cursor = typed.cursor
    if not cursor:
        break

# subscribeLabels from cursor=0, until quiet.
from_stream = 0
last_seq = 0
last_frame = time.monotonic()
stream = FirehoseSubscribeLabelsClient(
    params=models.ComAtprotoLabelSubscribeLabels.Params(cursor=0),
    base_uri=base.replace("http", "ws", 1) + "/xrpc",
)


def on_message(message) -> None:
    global from_stream, last_seq, last_frame
    last_frame = time.monotonic()
    parsed = parse_subscribe_labels_message(message)
    if not isinstance(parsed, models.ComAtprotoLabelSubscribeLabels.Labels):
        failures.append(f"unexpected frame {message.type}: {message.body}")
        return
    if parsed.seq <= last_seq:
        failures.append(f"seq {parsed.seq} after {last_seq}")
    last_seq = parsed.seq
    for label in message.body["labels"]:
        unsigned = {k: v for k, v in label.items() if k != "sig"}
        check(unsigned, label["sig"], f"subscribeLabels seq {parsed.seq}")
        from_stream += 1


def stop_when_quiet() -> None:
    started = time.monotonic()
    while time.monotonic() - last_frame < 3 and time.monotonic() - started < 120:
        time.sleep(0.2)
    stream.stop()


threading.Thread(target=stop_when_quiet, daemon=True).start()
stream.start(on_message, lambda e: failures.append(f"stream error: {e!r}"))

for f in failures[:20]:
    print(f, file=sys.stderr)
print(
    f"verified {from_query} labels from queryLabels and {from_stream} from subscribeLabels; "
    f"{len(failures)} failures"
)
sys.exit(1 if failures or from_query == 0 or from_stream != from_query else 0)

"""The protocols' JSON bodies (v2, TF Serving): a cap of their own, sized from the largest
legitimate request to the model asked for, read no further than that, parsed on a thread, and
every parser's failure the client's (CodecError, a 400).

The largest legitimate request is `max_batch_size` rows of the model's input as JSON numbers:
for a 32x32x3 uint8 image model, 128 x 3072 values of up to "255, " (5 characters) and their
share of brackets, 6 characters a value: 2.36 MB (`json.dumps` writes 2.07 MB for 128 random
images, 1.67 MB compact). Bodies over the cap are refused before they are read (413); the
service's own MAX_UPLOAD_BYTES still bounds multipart uploads and the binary tensor extension.

Parsing runs on a thread so that the event loop keeps serving other clients between the
parser's calls; a single C call (json, pydantic, numpy) holds the GIL while it runs, so the
cap is also what bounds any pause: about 90 ms of CPU for the largest body here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TypeVar

from starlette.requests import Request

from service.faults import BodyTooLarge, CodecError, TooManyRows, UnfitInput
from service.predictor import Predictor

T = TypeVar("T")

ENVELOPE_BYTES = 64 * 1024  # names, shape, parameters, and b64 image files of a few KB each
CHARS_PER_VALUE = {"u": 6, "i": 14, "b": 7, "f": 28}  # by dtype kind: "-1.2345678901234567e-300, "


def json_cap(predictor: Predictor, max_rows: int) -> int:
    """Bytes of the largest legitimate JSON request for `predictor`: `max_rows` of its input."""
    values = max_rows * math.prod(predictor.input_shape)
    return values * CHARS_PER_VALUE.get(predictor.input_dtype.kind, 28) + ENVELOPE_BYTES


async def read_capped(request: Request, max_bytes: int) -> bytes:
    """The body, or BodyTooLarge as soon as it is known to pass `max_bytes` (from its declared
    length, before reading anything)."""
    too_large = f"JSON body over {max_bytes} bytes, the most a request to this model needs"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(too_large)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLarge(too_large)
    return bytes(body)


async def parse_off_the_loop(parse: Callable[..., T], *args) -> T:
    """`parse(*args)` on a thread; the errors parsers raise on hostile input (nesting beyond
    the recursion limit, numpy's dimension limit and conversions) are the client's."""
    try:
        return await asyncio.to_thread(parse, *args)
    except (CodecError, UnfitInput, TooManyRows):  # the codecs' own answers
        raise
    except (RecursionError, ValueError, TypeError, OverflowError, IndexError) as error:
        raise CodecError(f"malformed request: {type(error).__name__}: {str(error)[:200]}") from None

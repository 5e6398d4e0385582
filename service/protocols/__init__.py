"""The ecosystem's inference protocols, as translations at the edge of the service.

Each protocol has wire types (pydantic), a codec (pure functions: request bytes in, tensors
out, and back) and thin routes; all of them call the same data plane (`dataplane`), which
calls the same models through the same micro-batchers as the service's own routes.
"""

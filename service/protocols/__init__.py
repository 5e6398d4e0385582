"""The ecosystem's inference protocols, as translations at the edge of the service.

Each protocol has wire types (pydantic), a codec (pure functions: request bytes in, tensors
out, and back) and thin routes; all of them call the one data plane (`service.dataplane`),
as the service's own routes do, and answer its faults with the one error table's statuses.
"""

"""The 100,000-record hostile run (`make hostile`, not part of `make test`): the integration tier's
fixtures, reused, including the autouse ones that check every output line against its schema."""

from tests.integration.conftest import (  # noqa: F401 (fixtures)
    kafka_isolation,
    outputs_match_their_schemas,
    session_cluster,
    session_outputs_match_their_schemas,
)

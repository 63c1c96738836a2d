"""YRD Gateway: the province node of the Yangtze River Delta data-exchange layer."""

__version__ = "0.1.0"

# A compiled build (make compiled) must not run extensions older than their sources.
from gateway.compiled import check_current as _check_current

_check_current()

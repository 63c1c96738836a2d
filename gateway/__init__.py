"""YRD Gateway: the province node of the Yangtze River Delta data-exchange layer."""

__version__ = "0.1.0"

from tests.charts.conftest import helm, render  # noqa: F401 - the chart fixtures, shared

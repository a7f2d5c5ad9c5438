"""The HTML report (stage `report`): figures and the page, from arrays and metric dicts."""

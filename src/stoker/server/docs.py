"""The API docs pages, Swagger UI (/docs) and ReDoc (/redoc), from assets shipped in the
package (`static/`): no file comes from the internet, so they work on an offline machine.

The OpenAPI document is inlined in the page: the page's own fetch of /openapi.json would carry
no Bearer token.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"


def _inline(spec: dict[str, Any]) -> str:
    return json.dumps(spec).replace("<", "\\u003c")  # no "</script>" inside the script


def swagger_html(title: str, spec: dict[str, Any]) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(title)} - Swagger UI</title>
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="/static/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="/static/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  spec: {_inline(spec)},
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout"
}});
</script></body></html>"""


def redoc_html(title: str, spec: dict[str, Any]) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)} - ReDoc</title>
<link rel="icon" href="/static/favicon.svg">
</head><body><div id="redoc"></div>
<script src="/static/redoc.standalone.js"></script>
<script>Redoc.init({_inline(spec)}, {{}}, document.getElementById("redoc"));</script>
</body></html>"""

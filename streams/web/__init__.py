"""HTTP: the policy API (framework-free), its tokens, its OpenAPI document, its Faust web routes,
the ClickHouse read behind `/v1/security_events`, and the console's static files (`console/`).
"""

"""HTTP (aiohttp): routes and views under /apps/{app}/scim/v2, authentication, limits, the audit log of
requests, and SCIM bodies in and out. Everything SCIM about a request happens in gateway.scim."""

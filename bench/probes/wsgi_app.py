"""The smallest WSGI application, so gunicorn's workers have something to load."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]

"""The `request_id` path convertor: a request id in `/api/v1/requests/{id}` paths, any segment but the
console's own words (`counts`, `cancel`), so `GET /api/v1/requests/counts` is not the detail of a
request named "counts", and `Allow` lists what each path really answers."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor

RESERVED = ("counts", "cancel")


class RequestIdConvertor(Convertor[str]):
    regex = rf"(?!(?:{'|'.join(RESERVED)})(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("request_id", RequestIdConvertor())
REQUEST = "/api/v1/requests/{correlation_id:request_id}"

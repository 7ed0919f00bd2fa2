"""Pagination with a ceiling: a client cannot ask for a million rows in one page."""

from rest_framework.pagination import LimitOffsetPagination


class CappedLimitOffsetPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500

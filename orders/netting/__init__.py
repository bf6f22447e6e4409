"""Netting: the orders of a symbol wait in a book; a cycle prices them on one quote, crosses
buys against sells, sends only the net to the broker as one order in whole lots, squares
lots against fractional demand with the house inventory, and allocates everyone at one price.

- `allocation`: the pure, exact arithmetic (plan a cycle, allocate its fill).
- `book` and `cycles`: the services that run it on the database and the broker.
"""

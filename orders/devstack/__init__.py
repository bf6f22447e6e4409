"""The development stack (`manage.py run_stack`) and the scenario driver (`manage.py
simulate`, `bench/e2e.py`): dev and demo tooling only, never imported by the pipeline."""

"""Campaign budgets: spend rollups, statuses, pause/resume signals to ad servers."""

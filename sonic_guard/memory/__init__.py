"""Memory estimation and planning: predict the peak device memory of a run and bend the plan to fit."""

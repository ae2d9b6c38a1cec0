"""Run time: GPU names, tuned profiles, the compiled-kernel library and the model loader."""

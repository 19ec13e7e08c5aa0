"""The native GPU ALS solver: one CUDA C source (als.cu), its CuPy loader (solver.py), the
row schedule both it and the numpy reference follow (schedule.py), the reference itself
(reference.py) and the memory plan checked before anything is allocated (memory.py).

Nothing here imports CuPy at module level: the schedule, the reference and the memory plan
run (and are tested) on machines without a GPU.
"""

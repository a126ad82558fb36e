"""The training loop every task uses (resumable bit for bit), autocast, memory sampling. Imports
nothing above it: no task, method, runner or report."""

"""Bus subjects the task queue publishes on, named in one place."""

#: Every task state change; the event is a :class:`northpole.tasks.model.TaskEvent`.
TASK_STATE_CHANGED = "task.state_changed"

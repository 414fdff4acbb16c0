"""The podtask operator: reconciles Task, TaskRun, Schedule, Queue and WaitToken."""

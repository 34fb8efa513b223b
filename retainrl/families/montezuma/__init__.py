"""Montezuma's Revenge (ALE): a searched route, behavioural cloning on its far rooms, PPO+RND."""

"""MiniGrid RoomChain: the study's CLOSE/FAR split in a chain of rooms, PPO fine-tuning."""

"""Simulation: a simulated Twilio and emulators of the OpenAI Realtime and ElevenLabs APIs."""

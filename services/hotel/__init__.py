"""Hotels: hotels by city with three room types and per-night inventory, and room holds (HotelService)."""

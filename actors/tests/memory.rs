//! Memory per tracked item (DESIGN.md §11: under 512 bytes), measured with a counting
//! allocator over the real item table and its indexes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use watchstate_actors::event::{ExternalIds, ItemType};
use watchstate_actors::state::{Identity, Items};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn ids(pairs: &[(&str, String)]) -> ExternalIds {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.clone()))
        .collect()
}

#[test]
fn a_tracked_item_costs_under_512_bytes() {
    const ACTORS: usize = 200;
    const ITEMS: usize = 100;
    let before = LIVE.load(Ordering::SeqCst);
    let mut tables: Vec<Items> = Vec::with_capacity(ACTORS);
    for a in 0..ACTORS {
        let mut items = Items::default();
        for i in 0..ITEMS {
            let n = a * ITEMS + i;
            let identity = if i % 2 == 0 {
                Identity {
                    item_type: ItemType::Movie,
                    ids: ids(&[
                        ("imdb", format!("tt{:07}", n)),
                        ("tmdb", format!("{}", n)),
                        ("tvdb", format!("{}", n + 7)),
                    ]),
                    series_ids: ExternalIds::new(),
                    season: None,
                    episode: None,
                }
            } else {
                Identity {
                    item_type: ItemType::Episode,
                    ids: ids(&[("tvdb", format!("{}", n)), ("imdb", format!("tt{:07}", n))]),
                    series_ids: ids(&[
                        ("tvdb", format!("{}", 70_000 + a)),
                        ("tmdb", format!("{}", a)),
                    ]),
                    season: Some(1),
                    episode: Some(i as u32),
                }
            };
            let item_id = format!("{:032x}", n);
            items.upsert(
                &item_id,
                &identity,
                Some("A Typical Title Of An Item"),
                1,
                false,
            );
        }
        items.shrink();
        tables.push(items);
    }
    let used = LIVE.load(Ordering::SeqCst) - before;
    let per_item = used as usize / (ACTORS * ITEMS);
    println!("memory per tracked item: {per_item} bytes");
    assert!(per_item < 512, "{per_item} bytes per item");
    assert_eq!(
        tables.iter().map(|t| t.len()).sum::<usize>(),
        ACTORS * ITEMS
    );
}
